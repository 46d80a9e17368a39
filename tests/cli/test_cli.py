"""The ``torchinn`` command line: inspect, compress and bench on small models written to a temporary
directory, numbers recounted, the compressed file loaded in a new process, and every bad input's
message and exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import torchinn as inn
from torchinn.sizing.metrics import count_flops
from torchinn.cli.main import CLIError, load_images, main

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

SHAPE = "2,3,16,16"
SHAPE_T = (2, 3, 16, 16)

MODULE_SOURCE = textwrap.dedent('''
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        """conv-BN-ReLU, a residual block, global pooling, a classifier."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.block = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 8, 3, padding=1))
            self.head = nn.Linear(8, 5)

        def forward(self, x):
            x = self.stem(x)
            x = torch.relu(x + self.block(x))
            return self.head(x.mean((2, 3)))


    def build():
        torch.manual_seed(0)
        return TinyNet().eval()


    def not_a_model():
        return 3


    def broken():
        raise RuntimeError("no weights here")


    NUMBER = 5
    INSTANCE = nn.Linear(4, 2)
''')


def _sequential() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5)).eval()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A directory with net.pt (torch.save of a Sequential), clinet_tiny.py (module:callable),
    net.ts (TorchScript), net.inn (a resized integral model) and other files that are not models."""
    d = tmp_path_factory.mktemp("cli")
    (d / "clinet_tiny.py").write_text(MODULE_SOURCE)
    model = _sequential()
    x = torch.randn(SHAPE_T)
    torch.save(model, d / "net.pt")
    torch.jit.save(torch.jit.trace(model, (x,)), str(d / "net.ts"))
    imodel = inn.convert(model, (x,), inn.ConvertConfig(permute=False))
    imodel.resize(0.5)
    inn.save(imodel, d / "net.inn")
    torch.save(model.state_dict(), d / "state_dict.pt")
    torch.save([1, 2, 3], d / "list.pt")
    (d / "garbage.pt").write_bytes(b"not a model at all")
    return d


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(argv, capsys) -> tuple[int, str, str]:
    """main(argv) -> (exit status, stdout, stderr); argparse errors give status 2."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _images(folder, n: int, sizes=((20, 30), (40, 16), (16, 16))) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        arr = torch.randint(0, 256, (h, w, 3), generator=gen, dtype=torch.uint8).numpy()
        Image.fromarray(arr).save(folder / (f"img{i}.png" if i % 2 else f"img{i}.jpg"))


# -- inspect ------------------------------------------------------------------------------------
def test_inspect_json_matches_recounts(work, capsys):
    code, out, err = run(["inspect", work / "net.pt", "--input-shape", SHAPE, "--json", "--trust-pickle"], capsys)
    assert code == 0, err
    info = json.loads(out)
    model = torch.load(work / "net.pt", weights_only=False)
    x = torch.randn(SHAPE_T)
    imodel = inn.convert(model, (x,), inn.ConvertConfig(permute=False))
    small = imodel.to_discrete(graph=True)
    params = dict((n, p.numel()) for n, p in small.named_parameters())
    assert info["params"] == sum(params.values())
    assert info["params_original"] == sum(p.numel() for p in model.parameters())
    assert info["flops"] == count_flops(small, (x,))
    assert [g["name"] for g in info["groups"]] == list(imodel.groups)
    for g in info["groups"]:
        group = imodel.groups[g["name"]]
        assert (g["size"], g["max_size"]) == (group.size, group.max_size)
        assert [tuple(t) for t in g["tensors"]] == [tuple(m) for m in group.members]
        assert g["params"] == sum(params.get(t, 0) for t in dict.fromkeys(t for t, _ in group.members))
    # the first conv's FLOPs: 2 * out_channels * in_channels * 3 * 3 * H * W * batch
    first = info["groups"][0]
    assert first["name"] == "0.weight:0"
    conv0 = 2 * 8 * 3 * 9 * 16 * 16 * 2
    conv1 = 2 * 16 * 8 * 9 * 8 * 8 * 2  # after the 2x2 max-pool
    assert first["flops"] == conv0 + conv1
    reasons = " ".join(p["reason"] for p in info["pinned"])
    assert "network output" in reasons


def test_inspect_table(work, capsys):
    code, out, err = run(["inspect", work / "net.pt", "--input-shape", SHAPE, "--members", "--trust-pickle"],
                         capsys)
    assert code == 0, err
    assert out.startswith(f"{work / 'net.pt'}: 2 channel groups, ")
    lines = out.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.startswith("group "))
    row = lines[header + 1].split()
    assert row[:3] == ["0.weight:0", "8", "3"]
    assert "0.weight[dim 0]" in out and "4.weight[dim 1]" in out
    assert "Channels kept at full size" in out and "network output" in out


def test_inspect_module_callable_on_sys_path(work, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(work))
    code, out, err = run(["inspect", "clinet_tiny:build", "--input-shape", SHAPE, "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    # the residual add ties the stem's output to the block's output: one group of 8, one of 12
    assert sorted(g["max_size"] for g in info["groups"]) == [8, 12]
    code, out2, err = run(["inspect", f"{work / 'clinet_tiny.py'}:build", "--input-shape", SHAPE, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out2)["groups"] == info["groups"]
    code, _, err = run(["inspect", f"{work / 'clinet_tiny.py'}:INSTANCE", "--input-shape", "3,4", "--json"],
                          capsys)
    assert code == 0, err  # an nn.Module attribute is used as it is


def test_inspect_saved_integral_model(work, capsys):
    code, out, err = run(["inspect", work / "net.inn", "--input-shape", SHAPE], capsys)
    assert code == 0, err
    assert "at its saved sizes" in out
    row = next(ln for ln in out.splitlines() if ln.startswith("0.weight:0"))
    assert row.split()[1] == "4/8"
    assert "0.weight:1: network input" in out  # pin reasons are saved in the .inn file


# -- compress -----------------------------------------------------------------------------------
def _in_new_process(path, x_path, out_path) -> str:
    code = textwrap.dedent(f"""
        import sys, torch
        model = torch.load({str(path)!r}, weights_only=False)
        x = torch.load({str(x_path)!r})
        with torch.no_grad():
            torch.save(model(x), {str(out_path)!r})
        print(type(model).__name__, "torchinn" in sys.modules)
    """)
    env = dict(os.environ, PYTHONPATH="")  # a fresh interpreter: torchinn and the test modules not imported
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=str(path.parent), timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_compress_random_inputs_report_and_reload(work, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(work))
    # 1 s tunes: on a loaded machine fewer than the usual 20 steps may fit, which skips tuning
    monkeypatch.setattr("torchinn.compression.pipeline.MIN_TUNING_STEPS", 1)
    out_file = work / "compressed" / "tiny.pt"
    code, out, err = run(["compress", "clinet_tiny:build", "--input-shape", SHAPE, "--target", "0.5",
                          "--seconds", "1", "--no-progress", "-o", out_file], capsys)
    assert code == 0, err
    assert "no --calibration" in err and "smoke test" in err
    report = json.loads((work / "compressed" / "tiny.pt.report.json").read_text())
    text = (work / "compressed" / "tiny.pt.report.txt").read_text()
    # a classifier's logits, but random weights give a nearly uniform softmax: compared by squared error
    assert report["loss"] == "mse" and "not class logits, the softmax" in text
    assert text in out and "s of tuning" in text
    small = torch.load(out_file, weights_only=False)
    n = sum(p.numel() for p in small.parameters())
    assert report["params_after"] == n == report["after"]
    assert report["metric"] == "params" and report["target"] == 0.5
    assert report["ratio"] == pytest.approx(report["after"] / report["before"])
    assert report["after"] <= 0.5 * report["before"]
    assert report["calibration"]["source"].startswith("random")
    assert report["tuning"]["steps"] >= 1
    # group sizes in the report are the shapes of the saved network
    sizes = {k: v[1] for k, v in report["sizes"].items()}
    assert small.get_parameter("block.0.weight").shape[0] == sizes["block.0.weight:0"]
    assert small.get_parameter("head.weight").shape[1] == sizes["stem.0.weight:0"]
    # a new process, without torchinn or the model's source module, gives the same outputs
    x = torch.randn(3, 3, 16, 16)
    torch.save(x, work / "x.pt")
    printed = _in_new_process(out_file, work / "x.pt", work / "y.pt")
    assert printed.split()[1] == "False"  # loaded without importing torchinn
    with torch.no_grad():  # (the new process may run with another number of threads: float noise)
        torch.testing.assert_close(torch.load(work / "y.pt"), small(x), rtol=1e-5, atol=1e-6)


def test_compress_flops_with_calibration_images(work, capsys):
    _images(work / "images" / "sub", 5)
    (work / "images" / "notes.txt").write_text("not an image")
    out_file = work / "flops.pt"
    code, out, err = run(["compress", work / "net.pt", "--input-shape", SHAPE, "--target", "0.6",
                          "--metric", "flops", "--calibration", work / "images", "--mean", "0.5",
                          "--std", "0.25,0.25,0.25", "--seconds", "1", "--no-progress", "-o", out_file,
                          "--trust-pickle"], capsys)
    assert code == 0, err
    assert "warning" not in err
    report = json.loads((work / "flops.pt.report.json").read_text())
    assert report["calibration"]["images"] == 4 and report["calibration"]["batches"] == 2  # 5 images, batch 2
    assert report["calibration"]["mean"] == [0.5]
    small = torch.load(out_file, weights_only=False)
    assert report["after"] == count_flops(small, (torch.randn(SHAPE_T),))
    assert report["before"] == pytest.approx(count_flops(_sequential(), (torch.randn(SHAPE_T),)), rel=0.01)
    assert report["after"] / report["before"] == pytest.approx(0.6, abs=0.6 * 0.03)
    assert report["params_after"] == sum(p.numel() for p in small.parameters())


def test_load_images_resize_crop_normalise(tmp_path):
    from PIL import Image

    img = torch.zeros(32, 64, 3, dtype=torch.uint8)  # h=32, w=64: black | grey | white columns
    img[:, 16:48] = 128
    img[:, 48:] = 255
    Image.fromarray(img.numpy()).save(tmp_path / "a.png")
    Image.fromarray(torch.full((16, 16, 3), 51, dtype=torch.uint8).numpy()).save(tmp_path / "b.png")
    (x,) = load_images(str(tmp_path), (2, 3, 16, 16))
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32
    # resized to 32x16 (covers 16x16), centre crop keeps the grey middle
    assert torch.allclose(x[0, :, :, 3:13], torch.full((3, 16, 10), 128 / 255), atol=1e-6)
    assert torch.allclose(x[1], torch.full((3, 16, 16), 0.2), atol=1e-6)
    (y,) = load_images(str(tmp_path), (2, 1, 16, 16), mean=[0.2], std=[0.5])
    assert y.shape == (2, 1, 16, 16)
    assert torch.allclose(y[1], torch.zeros(1, 16, 16), atol=1e-6)


# -- bench --------------------------------------------------------------------------------------
def test_bench_original_vs_compressed(work, capsys):
    small = work / "bench_small.pt"
    model = _sequential()
    imodel = inn.convert(model, (torch.randn(SHAPE_T),), inn.ConvertConfig(permute=False))
    imodel.resize(0.5)
    torch.save(imodel.to_discrete(graph=True).eval(), small)
    code, out, err = run(["bench", work / "net.pt", "--input-shape", SHAPE, "--compressed", small,
                          "--threads", "1", "--repeats", "3", "--warmup", "1", "--json", "--trust-pickle"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["threads"] == 1 and info["cores"] >= 1 and info["torch"] == torch.__version__
    orig, comp = info["rows"]
    assert (orig["role"], comp["role"]) == ("original", "compressed")
    assert orig["params"] == sum(p.numel() for p in model.parameters())
    assert comp["params"] == sum(p.numel() for p in torch.load(small, weights_only=False).parameters())
    for r in info["rows"]:
        assert r["latency_ms"] > 0 and r["items_per_s"] == pytest.approx(2 / (r["latency_ms"] / 1e3))
    assert comp["speedup"] == pytest.approx(orig["latency_ms"] / comp["latency_ms"])
    code, out, err = run(["bench", work / "net.ts", "--input-shape", SHAPE, "--compressed", work / "net.inn",
                          "--threads", "1", "--repeats", "2", "--warmup", "1", "--trust-code"], capsys)
    assert code == 0, err
    assert "1 thread(s)" in out and "machine:" in out
    assert "(TorchScript)" in out and "net.inn (to_discrete() at its saved sizes)" in out
    assert "items/s" in out and "speed-up" in out


# -- errors -------------------------------------------------------------------------------------
ARG_ERRORS = [  # argparse: status 2, "torchinn <command>: error: ..."
    (["inspect", "net.pt"], "required: --input-shape"),
    (["inspect", "net.pt", "--input-shape", "1,3,x"], "comma-separated positive integers"),
    (["inspect", "net.pt", "--input-shape", "1,0,16"], "positive integer"),
    (["compress", "net.pt", "--input-shape", SHAPE, "--target", "1", "-o", "o.pt"], "must be in (0, 1)"),
    (["compress", "net.pt", "--input-shape", SHAPE, "--target", "0", "-o", "o.pt"], "must be in (0, 1)"),
    (["compress", "net.pt", "--input-shape", SHAPE, "--target", "1.5", "-o", "o.pt"], "must be in (0, 1)"),
    (["compress", "net.pt", "--input-shape", SHAPE, "--target", "half", "-o", "o.pt"], "fraction in (0, 1)"),
    (["compress", "net.pt", "--input-shape", SHAPE, "--target", "0.5", "--metric", "accuracy", "-o", "o.pt"],
     "invalid choice: 'accuracy'"),
    (["compress", "net.pt", "--input-shape", SHAPE, "--target", "0.5"], "required: -o/--output"),
    (["compress", "net.pt", "--input-shape", SHAPE, "--target", "0.5", "--seconds", "-1", "-o", "o.pt"],
     "seconds must be >= 0"),
    (["compress", "net.pt", "--input-shape", SHAPE, "--target", "0.5", "--weights-share", "1.5", "-o", "o.pt"],
     "the share must be in [0, 1], got 1.5"),
    (["bench", "net.pt", "--input-shape", SHAPE, "--threads", "0"], "the number of threads must be in [1, "),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]

RUN_ERRORS = [  # status 1, one line "torchinn: error: ..."
    (["inspect", "missing.pt", "--input-shape", SHAPE], "no such file"),
    (["inspect", ".", "--input-shape", SHAPE], "is a directory"),
    (["inspect", "garbage.pt", "--input-shape", SHAPE], "cannot read MODEL"),
    (["inspect", "list.pt", "--input-shape", SHAPE], "holds a list, not an nn.Module"),
    (["inspect", "state_dict.pt", "--input-shape", SHAPE], "holds a state_dict"),
    (["inspect", "net.ts", "--input-shape", SHAPE], "TorchScript file: torch.export"),
    (["compress", "net.ts", "--input-shape", SHAPE, "--target", "0.5", "-o", "o.pt"], "pass the Python module"),
    (["compress", "net.inn", "--input-shape", SHAPE, "--target", "0.5", "-o", "o.pt"], "needs the original network"),
    (["compress", "net.pt", "--input-shape", SHAPE, "--target", "0.5", "-o", "small.inn"], "give a name like small.pt"),
    (["inspect", "clinet_tiny.py:not_a_model", "--input-shape", SHAPE], "returned an int, not an nn.Module"),
    (["inspect", "clinet_tiny.py:NUMBER", "--input-shape", SHAPE], "neither an nn.Module nor a callable"),
    (["inspect", "clinet_tiny.py:missing", "--input-shape", SHAPE], "has no attribute 'missing'"),
    (["inspect", "clinet_tiny.py:broken", "--input-shape", SHAPE], "no weights here"),
    (["inspect", "no_such_module_xyz:build", "--input-shape", SHAPE], "No module named 'no_such_module_xyz'"),
    (["inspect", "nothere.py:build", "--input-shape", SHAPE], "no such file: nothere.py"),
    (["inspect", "net.pt", "--input-shape", "2,5,16,16", "--trust-pickle"], "to have 3 channels"),
    (["compress", "net.pt", "--input-shape", SHAPE, "--target", "0.5", "--calibration", "nodir", "-o", "o.pt",
      "--trust-pickle"], "not a directory of images"),
    (["compress", "net.pt", "--input-shape", "9,3,16,16", "--target", "0.5", "--calibration", "few", "-o", "o.pt",
      "--trust-pickle"], "has 1 image(s)"),
    (["compress", "net.pt", "--input-shape", SHAPE, "--target", "0.5", "--mean", "0.5", "-o", "o.pt"],
     "give --calibration too"),
    (["bench", "net.pt", "--input-shape", "2,5,16,16", "--trust-pickle"], "failed: RuntimeError"),
    (["inspect", "net.pt", "--input-shape", SHAPE], "pass --trust-code if you trust its source"),
    (["compress", "net.pt", "--input-shape", SHAPE, "--target", "0.5", "-o", "o.pt"], "can run arbitrary code"),
    (["bench", "net.inn", "--input-shape", SHAPE, "--compressed", "net.pt"],
     "it needs the Python object torch.nn.modules.container.Sequential"),
]


@pytest.mark.parametrize("argv, message", ARG_ERRORS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in ARG_ERRORS])
def test_argument_errors(work, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(work)
    code, out, err = run(argv, capsys)
    assert code == 2
    assert "error:" in err and message in err, err


@pytest.mark.parametrize("argv, message", RUN_ERRORS, ids=[" ".join(a[:2]) for a, _ in RUN_ERRORS])
def test_run_errors(work, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(work)
    _images(work / "few", 1)
    code, out, err = run(argv, capsys)
    assert code == 1
    assert err.startswith("torchinn: error: ") and message in err, err
    assert len(err.strip().splitlines()) <= 2  # the message (+ "run with -v" for errors from the model)
    assert "Traceback" not in err


def test_std_must_be_positive(work, capsys, monkeypatch):
    monkeypatch.chdir(work)
    _images(work / "two", 2)
    code, _, err = run(["compress", "net.pt", "--input-shape", SHAPE, "--target", "0.5", "--calibration", "two",
                        "--std", "0,1,1", "-o", "o.pt", "--trust-pickle"], capsys)
    assert code == 2 and "argument --std: every std must be a finite number > 0" in err
    with pytest.raises(CLIError, match=r"--std values must be > 0, got \[0\.0, 1\.0, 1\.0\]"):
        load_images(str(work / "two"), SHAPE_T, std=(0.0, 1.0, 1.0))  # the function checks too


def test_help_warns_about_untrusted_files_and_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "torchinn.cli.main", "compress", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "only load files you trust" in " ".join(done.stdout.split())
    assert "weights_only=False" in done.stdout


# -- nothing unpickled without --trust-pickle ----------------------------------------------------
EVIL_SOURCE = textwrap.dedent('''
    import os, pickle, sys
    import torch


    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + sys.argv[1],))


    if sys.argv[3] == "raw":
        with open(sys.argv[2], "wb") as f:
            pickle.dump(Evil(), f, protocol=2)
    else:  # torch.save's zip format, the pickle in data.pkl
        torch.save(Evil(), sys.argv[2])
''')

EVIL_COMMANDS = {
    "inspect": lambda f: ["inspect", f, "--input-shape", SHAPE],
    "compress": lambda f: ["compress", f, "--input-shape", SHAPE, "--target", "0.5", "--seconds", "0.1", "-o",
                           f.parent / "evil_out.pt"],
    "bench": lambda f: ["bench", f, "--input-shape", SHAPE, "--repeats", "1", "--warmup", "1"],
    "bench --compressed": lambda f: ["bench", f.parents[2] / "net.inn", "--input-shape", SHAPE, "--compressed", f,
                                     "--repeats", "1", "--warmup", "1"],
}


@pytest.fixture(scope="module")
def evil(work):
    """evil/{raw,zip}/x.{pt,inn}: pickles whose loading runs `touch <marker>`, in raw pickle and torch.save
    format (written by another process: the class exists only there)."""
    (work / "evil_maker.py").write_text(EVIL_SOURCE)
    files = {}
    for fmt in ("raw", "zip"):
        for name in ("x.pt", "x.inn"):
            folder = work / "evil" / fmt
            folder.mkdir(parents=True, exist_ok=True)
            marker = folder / f"MARKER_{name}"
            subprocess.run([sys.executable, str(work / "evil_maker.py"), str(marker), str(folder / name), fmt],
                           check=True, timeout=120)
            files[fmt, name] = (folder / name, marker)
    return files


@pytest.mark.parametrize("command", list(EVIL_COMMANDS))
@pytest.mark.parametrize("fmt", ["raw", "zip"])
@pytest.mark.parametrize("name", ["x.pt", "x.inn"])
def test_malicious_pickle_runs_nothing(evil, capsys, command, fmt, name):
    path, marker = evil[fmt, name]
    code, out, err = run(EVIL_COMMANDS[command](path), capsys)
    assert code == 1 and err.startswith("torchinn: error: ") and "Traceback" not in err
    assert not marker.exists(), "the pickle's __reduce__ ran"
    if name == "x.inn":
        assert "never unpickles a .inn file" in err
    else:
        assert "pickle of Python objects" in err and "can run arbitrary code" in err
        assert "pass --trust-code if you trust its source" in err and "module:callable" in err
        assert "it needs the Python object posix.system" in err or "os.system" in err


def test_malicious_pickle_runs_with_trust_pickle_but_never_as_inn(evil, capsys, tmp_path):
    """The control: the crafted files do run code once trusted, so the test above can fail; a .inn
    file is never unpickled, even with the flag."""
    (path, marker), (inn_path, inn_marker) = evil["zip", "x.pt"], evil["zip", "x.inn"]
    code, _, err = run(["inspect", inn_path, "--input-shape", SHAPE, "--trust-pickle"], capsys)
    assert code == 1 and "never unpickles a .inn file" in err and not inn_marker.exists()
    code, _, err = run(["inspect", path, "--input-shape", SHAPE, "--trust-pickle"], capsys)
    assert code == 1 and "holds an int, not an nn.Module" in err  # os.system's return value
    assert marker.exists()
    marker.unlink()


def test_torch_export_program_needs_trust_pickle(work, capsys):
    model = _sequential()
    torch.export.save(torch.export.export(model, (torch.randn(SHAPE_T),)), str(work / "net.pt2"))
    code, _, err = run(["bench", work / "net.pt2", "--input-shape", SHAPE, "--repeats", "1", "--warmup", "1"], capsys)
    assert code == 1 and "torch.export program" in err and "--trust-code" in err
    code, out, err = run(["bench", work / "net.pt2", "--input-shape", SHAPE, "--repeats", "1", "--warmup", "1",
                          "--trust-pickle", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["rows"][0]["kind"] == "torch.export"


def test_state_dict_and_plain_pickles_read_without_trust(work, capsys):
    from torchinn.cli.loading import load_model

    with pytest.raises(CLIError, match="holds a state_dict"):
        load_model(str(work / "state_dict.pt"))
    with pytest.raises(CLIError, match="holds a list, not an nn.Module"):
        load_model(str(work / "list.pt"))
    loaded = load_model(str(work / "net.pt"), trust_code=True)
    assert isinstance(loaded.obj, nn.Sequential) and loaded.kind == "module"


# -- 16-bit calibration images -------------------------------------------------------------------
def _png16(path, arr) -> None:
    """A 16-bit PNG (grey or RGB) of the uint16 array ``arr`` (H, W, C), written by hand: Pillow
    cannot write 16-bit RGB."""
    import struct
    import zlib

    h, w, c = arr.shape
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 3: 2}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_load_images_scales_16_bit_pngs(tmp_path):
    import numpy as np
    from PIL import Image

    ramp = (np.arange(16 * 16).reshape(16, 16) * 250).astype(np.uint16)  # 0 .. 63750: mostly above 255
    Image.fromarray(ramp).save(tmp_path / "a_grey_pil.png")  # Pillow writes it as 16-bit grey (I;16)
    assert Image.open(tmp_path / "a_grey_pil.png").mode == "I;16"
    _png16(tmp_path / "b_grey.png", np.full((16, 16, 1), 30000, np.uint16))
    _png16(tmp_path / "c_rgb.png", np.stack([np.full((16, 16), v, np.uint16) for v in (0, 30000, 65535)], -1))
    (x,) = load_images(str(tmp_path), (3, 1, 16, 16))
    assert torch.allclose(x[0, 0], torch.from_numpy(ramp / 65535.0).float(), atol=1e-6)  # not clipped at 255
    assert x[0].max().item() == pytest.approx(63750 / 65535, abs=1e-6)
    assert torch.allclose(x[1], torch.full((1, 16, 16), 30000 / 65535), atol=1e-6)
    (y,) = load_images(str(tmp_path), (3, 3, 16, 16))
    assert torch.allclose(y[1], torch.full((3, 16, 16), 30000 / 65535), atol=1e-6)  # grey repeated for C = 3
    # 16-bit RGB: Pillow keeps the high byte, so the scale is right to 1/255
    assert torch.allclose(y[2].mean((1, 2)), torch.tensor([0.0, 30000 / 65535, 1.0]), atol=1 / 255)
    # resized 16-bit images are scaled too: a 32x32 image of 40000 covers 16x16
    for f in tmp_path.iterdir():
        f.unlink()
    Image.fromarray(np.full((32, 32), 40000, np.uint16)).save(tmp_path / "big.png")
    (z,) = load_images(str(tmp_path), (1, 1, 16, 16))
    assert torch.allclose(z, torch.full((1, 1, 16, 16), 40000 / 65535), atol=1e-6)


# -- -o checked before the run, written atomically -------------------------------------------------
SLOW_SOURCE = textwrap.dedent('''
    import pathlib
    from torch import nn


    def build():
        pathlib.Path(__file__).with_name("BUILT").touch()
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3)).eval()
''')


def _bad_outputs(d):
    (d / "readonly.pt").write_bytes(b"old")
    (d / "readonly.pt").chmod(0o444)
    (d / "real.pt").write_bytes(b"old")
    (d / "link.pt").symlink_to(d / "real.pt")
    os.mkfifo(d / "fifo.pt")
    (d / "dirreport.pt").write_bytes(b"old")
    (d / "dirreport.pt.report.json").mkdir()
    (d / "notafolder").write_bytes(b"")
    return [("readonly.pt", "is read-only (mode -r--r--r--)"), ("link.pt", "it is a symbolic link"),
            ("fifo.pt", "it is a FIFO"), ("dirreport.pt", "cannot write 'dirreport.pt.report.json': it is a directory"),
            ("notafolder/out.pt", "cannot create its folder 'notafolder'")]


def test_compress_output_checked_before_the_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "slowmodel.py").write_text(SLOW_SOURCE)
    for name, message in _bad_outputs(tmp_path):
        code, _, err = run(["compress", "slowmodel.py:build", "--input-shape", SHAPE, "--target", "0.5",
                            "-o", name], capsys)
        assert code == 1 and err.startswith(f"torchinn: error: -o {name!r}") and message in err, err
        assert "Traceback" not in err
        assert not (tmp_path / "BUILT").exists(), f"-o {name}: the model was loaded before -o was checked"
    assert (tmp_path / "real.pt").read_bytes() == b"old" and (tmp_path / "link.pt").is_symlink()


KILL_SOURCE = textwrap.dedent('''
    import os, sys, time
    import torch
    from torchinn.cli.main import main

    how, ready = sys.argv[1], sys.argv[2]
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # half of the new file is written...
        f.flush()
        if how == "exit":
            os._exit(9)  # ...and the process dies without any cleanup
        open(ready, "w").close()
        time.sleep(300)  # ...and waits for SIGKILL

    torch.save = dying_save
    main(["compress", "slowmodel.py:build", "--input-shape", "2,3,16,16", "--target", "0.5", "--seconds", "0.2",
          "--no-progress", "-o", "existing.pt"])
''')


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_killed_compress_keeps_the_old_file(tmp_path, how):
    import signal
    import time

    (tmp_path / "slowmodel.py").write_text(SLOW_SOURCE)
    (tmp_path / "killme.py").write_text(KILL_SOURCE)
    old = os.urandom(5000)
    (tmp_path / "existing.pt").write_bytes(old)
    (tmp_path / "existing.pt").chmod(0o640)
    before = sorted(os.listdir(tmp_path))
    ready = tmp_path / "READY"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "killme.py", how, str(ready)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if how == "sigkill":
        deadline = time.monotonic() + 120
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), proc.communicate()[1].decode()
        proc.send_signal(signal.SIGKILL)
        ready.unlink()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (9 if how == "exit" else -signal.SIGKILL), err.decode()
    assert (tmp_path / "existing.pt").read_bytes() == old
    assert (tmp_path / "existing.pt").stat().st_mode & 0o777 == 0o640
    after = sorted(n for n in os.listdir(tmp_path) if n not in ("BUILT", "__pycache__"))
    assert after == before, "a temporary file was left behind"


def test_compress_replaces_existing_output_keeping_its_mode(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "slowmodel.py").write_text(SLOW_SOURCE)
    (tmp_path / "out.pt").write_bytes(b"old")
    (tmp_path / "out.pt").chmod(0o640)
    code, _, err = run(["compress", "slowmodel.py:build", "--input-shape", SHAPE, "--target", "0.5",
                        "--seconds", "0.2", "--no-progress", "-o", "out.pt"], capsys)
    assert code == 0, err
    small = torch.load(tmp_path / "out.pt", weights_only=False)
    assert sum(p.numel() for p in small.parameters()) < 4 * 3 * 9 + 4 + 2 * 4 * 9 + 2
    assert (tmp_path / "out.pt").stat().st_mode & 0o777 == 0o640
    assert set(os.listdir(tmp_path)) - {"__pycache__"} == {"BUILT", "out.pt", "out.pt.report.json",
                                                           "out.pt.report.txt", "slowmodel.py"}


def test_crafted_torchscript_zip_runs_nothing(tmp_path, capsys):
    """A zip with code/ is read by torch.jit.load, whose unpickler knows TorchScript types only."""
    import pickle
    import zipfile

    marker = tmp_path / "MARKER"
    payload = pickle.dumps(_Reducer(f"touch {marker}"), protocol=2)
    with zipfile.ZipFile(tmp_path / "x.pt", "w") as z:
        for name in ("data.pkl", "constants.pkl"):
            z.writestr(f"x/{name}", payload)
        z.writestr("x/code/__torch__.py", "def f(x):\n    return x\n")
        z.writestr("x/version", "3\n")
    code, _, err = run(["bench", tmp_path / "x.pt", "--input-shape", SHAPE], capsys)
    assert code == 1 and "is a TorchScript file, which is code" in err, err  # not opened without --trust-code
    code, _, err = run(["bench", tmp_path / "x.pt", "--input-shape", SHAPE, "--trust-code"], capsys)
    assert code == 1 and "cannot read MODEL" in err and "posix.system" in err, err
    code, _, err = run(["inspect", tmp_path / "x.pt", "--input-shape", SHAPE, "--trust-code"], capsys)
    assert code == 1 and "cannot trace a ScriptModule" in err, err  # never opened: inspect cannot use it
    assert not marker.exists()


class _Reducer:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_model_that_is_a_fifo_is_not_opened(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.pt")
    code, _, err = run(["inspect", tmp_path / "pipe.pt", "--input-shape", SHAPE], capsys)
    assert code == 1 and "is not a regular file" in err  # and it returned: opening a FIFO would block


# -- TorchScript is code: refused before torch.jit.load without --trust-code -----------------------
class _ScriptedSideEffect(nn.Module):
    """A module whose TorchScript ``__setstate__`` (run by ``torch.jit.load``) creates the file at
    ``path`` through a shared memory map."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2, 4))
        self.path = path
        self.seen = torch.zeros(4, dtype=torch.uint8)

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.path, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.path = state[0]
        self.weight = state[1]
        self.training = state[2]
        self.seen = torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8)
        self.seen.fill_(65)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


@pytest.fixture
def scripted(tmp_path):
    marker = tmp_path / "MARKER"
    torch.jit.script(_ScriptedSideEffect(str(marker))).save(str(tmp_path / "evil.ts"))
    assert not marker.exists()
    return tmp_path / "evil.ts", marker


TS_COMMANDS = {
    "inspect": lambda f: ["inspect", f, "--input-shape", "2,4"],
    "compress": lambda f: ["compress", f, "--input-shape", "2,4", "--target", "0.5", "-o", f.parent / "o" / "x.pt"],
    "bench": lambda f: ["bench", f, "--input-shape", "2,4", "--repeats", "1", "--warmup", "1"],
    "bench --compressed": lambda f: ["bench", "clinet_tiny.py:INSTANCE", "--input-shape", "2,4", "--compressed", f,
                                     "--repeats", "1", "--warmup", "1"],
}


@pytest.mark.parametrize("command", list(TS_COMMANDS))
def test_torchscript_is_refused_before_it_is_loaded(work, scripted, capsys, monkeypatch, command):
    monkeypatch.chdir(work)
    path, marker = scripted
    code, out, err = run(TS_COMMANDS[command](path), capsys)
    assert code == 1 and err.startswith("torchinn: error: ") and "Traceback" not in err, err
    assert not marker.exists(), "torch.jit.load ran the file's __setstate__"
    if command.startswith("bench"):
        assert "is a TorchScript file, which is code: torch.jit.load runs its __setstate__" in err
        assert "pass --trust-code if you trust its source" in err
    else:  # never loaded, even with the flag: torch.export cannot trace it
        assert "cannot trace a ScriptModule" in err
        code, _, err = run(TS_COMMANDS[command](path) + ["--trust-code"], capsys)
        assert code == 1 and "cannot trace a ScriptModule" in err and not marker.exists()
    assert not (path.parent / "o").exists()


def test_trusted_torchscript_runs_its_setstate(work, scripted, capsys):
    """The control: the side effect is real, so the test above can fail; --trust-pickle (the old name)
    still works."""
    path, marker = scripted
    for flag in ("--trust-code", "--trust-pickle"):
        code, out, err = run(TS_COMMANDS["bench"](path) + [flag], capsys)
        assert code == 0, err
        assert marker.read_bytes() == b"AAAA" and "(TorchScript)" in out
        marker.unlink()


def test_trust_code_help_names_every_kind_of_code(capsys):
    from torchinn.cli.main import build_parser

    for command in ("inspect", "compress", "bench"):
        code, out, _ = run([command, "--help"], capsys)
        text = " ".join(out.split())
        assert code == 0 and "--trust-code, --trust-pickle" in text
        assert "pickles of Python objects" in text and "TorchScript files and torch.export programs" in text
        assert "--trust-pickle is the old name of this flag" in text
        extra = ["--target", "0.5", "-o", "o.pt"] if command == "compress" else []
        argv = [command, "m", "--input-shape", "1", *extra]
        assert build_parser().parse_args(argv + ["--trust-pickle"]).trust_code
        assert not build_parser().parse_args(argv).trust_code
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "pickles, torchscript files and torch.export programs are code" in " ".join(readme.split()).lower()


# -- option ranges --------------------------------------------------------------------------------
COMPRESS = ["compress", "net.pt", "--input-shape", SHAPE, "--target", "0.5", "--trust-code"]
RANGE_ERRORS = [
    (COMPRESS + ["--calibration", "two", "--std", "inf", "-o", "r/o.pt"],
     "argument --std: every std must be a finite number > 0 (the images are divided by it), got 'inf'"),
    (COMPRESS + ["--calibration", "two", "--std", "nan", "-o", "r/o.pt"], "argument --std: every std must be a"),
    (COMPRESS + ["--calibration", "two", "--std", "0.2,-1,0.2", "-o", "r/o.pt"], "got '0.2,-1,0.2'"),
    (COMPRESS + ["--calibration", "two", "--mean", "0,inf,0", "-o", "r/o.pt"],
     "argument --mean: every mean must be a finite number, got '0,inf,0'"),
    (COMPRESS + ["--calibration", "two", "--mean", "nan", "-o", "r/o.pt"], "argument --mean: every mean must"),
    (COMPRESS + ["--seed", "99999999999999999999999", "-o", "r/o.pt"],
     "argument --seed: a seed must be in [0, 4294967295], got 99999999999999999999999"),
    (COMPRESS + ["--seed", "-1", "-o", "r/o.pt"], "argument --seed: a seed must be in [0, 4294967295], got -1"),
    (["inspect", "net.pt", "--input-shape", SHAPE, "--seed", "1.5"], "argument --seed: a seed is a whole number"),
    (["bench", "net.pt", "--input-shape", SHAPE, "--seed", str(2**32)], "a seed must be in [0, 4294967295]"),
    (["demo", "--seed", "99999999999999999999999"], "argument --seed: a seed must be in [0, 4294967295]"),
    (["bench", "net.pt", "--input-shape", SHAPE, "--threads", "100000"],
     f"argument --threads: the number of threads must be in [1, {4 * os.cpu_count()}] (4 x the "),
    (["demo", "--threads", "100000"], f"the number of threads must be in [1, {4 * os.cpu_count()}]"),
    (["bench", "net.pt", "--input-shape", SHAPE, "--threads", "many"], "expected a number of threads in [1, "),
]


@pytest.mark.parametrize("argv, message", RANGE_ERRORS, ids=[" ".join(a[-4:]) for a, _ in RANGE_ERRORS])
def test_option_out_of_range(work, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(work)
    _images(work / "two", 2)
    code, out, err = run(argv, capsys)
    assert code == 2 and message in err, err
    assert not (work / "r").exists()


def test_largest_threads_and_seed_are_accepted(work, capsys):
    code, out, err = run(["bench", work / "net.inn", "--input-shape", SHAPE, "--threads", str(4 * os.cpu_count()),
                          "--seed", str(2**32 - 1), "--repeats", "1", "--warmup", "1", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["threads"] == 4 * os.cpu_count()


# -- compress -o: never an input, reports after the whole name, no folders left behind ---------------
def _compress_argv(model, out, *extra):
    return ["compress", model, "--input-shape", SHAPE, "--target", "0.5", "--seconds", "0", "--no-progress",
            "-o", out, *extra]


def test_output_that_is_an_input_is_refused_unless_force(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save(_sequential(), tmp_path / "in.pt")
    original = (tmp_path / "in.pt").read_bytes()
    os.link(tmp_path / "in.pt", tmp_path / "hard.pt")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to(tmp_path)
    (tmp_path / "slowmodel.py").write_text(SLOW_SOURCE)
    _images(tmp_path / "imgs", 2)
    cases = [("in.pt", ["in.pt"], "'in.pt' is the same file as MODEL 'in.pt'"),
             ("in.pt", ["./hard.pt"], "'hard.pt' is the same file as MODEL 'in.pt'"),  # a hard link
             ("in.pt", ["sub/up/in.pt"], "'sub/up/in.pt' is the same file as MODEL 'in.pt'"),  # via a folder link
             ("slowmodel.py:build", ["slowmodel.py"], "is the same file as MODEL 'slowmodel.py'"),
             ("in.pt", ["imgs/img0.jpg", "--calibration", "imgs"],
              "'imgs/img0.jpg' is the same file as --calibration image 'imgs/img0.jpg'")]
    for model, extra, message in cases:
        code, _, err = run(_compress_argv(model, *extra, "--trust-code"), capsys)
        assert code == 1 and message in err and "pass --force to replace it" in err, err
    assert (tmp_path / "in.pt").read_bytes() == original and not (tmp_path / "BUILT").exists()
    assert not list(tmp_path.glob("*.report.*"))
    code, out, err = run(_compress_argv("in.pt", "in.pt", "--trust-code", "--force"), capsys)
    assert code == 0, err
    small = torch.load(tmp_path / "in.pt", weights_only=False)
    assert isinstance(small, torch.fx.GraphModule) and (tmp_path / "in.pt.report.json").exists()


def test_report_files_are_named_after_the_whole_output_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "slowmodel.py").write_text(SLOW_SOURCE)
    for name in ("a.pt", "a.pth", "a"):
        code, out, err = run(_compress_argv("slowmodel.py:build", name), capsys)
        assert code == 0, err
        assert out.splitlines()[-1].endswith(f", {name}.report.json, {name}.report.txt")
        assert json.loads((tmp_path / f"{name}.report.json").read_text())["output"] == name
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("a")) == [
        "a", "a.pt", "a.pt.report.json", "a.pt.report.txt", "a.pth", "a.pth.report.json", "a.pth.report.txt",
        "a.report.json", "a.report.txt"]


def test_failed_compress_removes_only_the_folders_it_made(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "slowmodel.py").write_text(SLOW_SOURCE)
    (tmp_path / "kept").mkdir()
    for out in ("new/deeper/x.pt", "kept/new/x.pt", "kept/x.pt"):
        code, _, err = run(["compress", "slowmodel.py:build", "--input-shape", "2,5,16,16", "--target", "0.5",
                            "-o", out], capsys)  # 5 channels: the model fails
        assert code == 1 and "to have 3 channels" in err, err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["BUILT", "kept", "slowmodel.py"]
    assert list((tmp_path / "kept").iterdir()) == []  # the folder that was there stays


def test_nan_outputs_are_not_an_internal_error():
    from torchinn.cli.output import nan_equal

    a = torch.tensor([1.0, float("nan"), 3.0])
    assert nan_equal(a, a.clone()) and not nan_equal(a, torch.tensor([1.0, 2.0, 3.0]))
    assert not nan_equal(a, torch.tensor([1.0, float("nan"), 3.5])) and not nan_equal(a, a.double())
    assert nan_equal(torch.arange(3), torch.arange(3)) and not nan_equal(torch.arange(3), torch.arange(1, 4))


# -- text from files is printed printable; errors are one line ----------------------------------------
def test_text_from_a_file_is_printed_with_control_characters_escaped(work, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from torchinn.io.format import checksum

    with safe_open(str(work / "net.inn"), framework="pt") as f:
        meta = json.loads(f.metadata()["torchinn"])
    tensors = load_file(work / "net.inn")
    key = next(iter(meta["pinned"]))
    meta["pinned"][key] = "fine\x1b[2J\x1b]0;owned\x07\u202egone\nnext"
    meta["sha256"] = checksum({k: v for k, v in meta.items() if k != "sha256"}, tensors)
    save_file(tensors, str(tmp_path / "esc.inn"), metadata={"torchinn": json.dumps(meta)})
    code, out, err = run(["inspect", tmp_path / "esc.inn", "--input-shape", SHAPE], capsys)
    assert code == 0, err
    assert f"{key}: fine\\x1b[2J\\x1b]0;owned\\x07\\u202egone\\nnext" in out
    assert not any(not c.isprintable() for c in out.replace("\n", "")), "a control character reached the terminal"
    code, out, err = run(["inspect", tmp_path / "esc.inn", "--input-shape", SHAPE, "--json"], capsys)
    assert code == 0 and "\x1b" not in out
    assert next(p["reason"] for p in json.loads(out)["pinned"] if p["tensor_dim"] == key) == meta["pinned"][key]


def test_printable_escapes_only_what_is_not_printable():
    from hypothesis import given
    from hypothesis import strategies as st

    from torchinn.cli.output import printable

    @given(st.text())
    def check(text):
        shown = printable(text)
        assert all(c.isprintable() for c in shown)
        if text.isprintable():
            assert shown == text
        assert printable(text, keep_newlines=True).split("\n") == [printable(t) for t in text.split("\n")]

    check()
    assert printable("a\tb\x00é\u200b") == "a\\tb\\x00é\\u200b"


def test_inspect_of_an_inn_file_on_the_wrong_shape_is_one_line(work, capsys):
    for command in ("inspect", "bench"):
        code, _, err = run([command, work / "net.inn", "--input-shape", "2,4,16,16"], capsys)
        assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith(f"torchinn: error: {str(work / 'net.inn')!r} cannot run on --input-shape 2x4x16x16: "
                              "input 0 has shape (2, 4, 16, 16), but the network was converted for inputs of shape "
                              "(any, 3, any, any)"), err
    code, _, err = run(["inspect", work / "net.inn", "--input-shape", SHAPE, "--input-shape", "2,3"], capsys)
    assert code == 1 and "net.inn' takes 1 input(s), got 2 --input-shape (2x3x16x16, 2x3)" in err, err


def test_library_value_errors_are_one_line(work, capsys, monkeypatch):
    """A ValueError / TypeError from the library (here: a target no size reaches) is the library's
    answer to a bad input: one line, no traceback, no "run with -v"."""
    monkeypatch.chdir(work)
    code, _, err = run(["compress", "net.pt", "--input-shape", SHAPE, "--target", "0.001", "--metric", "flops",
                        "--seconds", "0", "-o", "unreach.pt", "--trust-code"], capsys)
    assert code == 1 and "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("torchinn: warning:")]
    assert lines == [lines[0]] and lines[0].startswith("torchinn: error: UnreachableTarget: cannot reach the target")
    assert not (work / "unreach.pt").exists() and not (work / "unreach.pt.report.json").exists()


def test_demo_out_that_is_a_file_is_refused_before_running(tmp_path, capsys):
    (tmp_path / "afile").write_text("keep")
    code, out, err = run(["demo", "--out", tmp_path / "afile", "--quick", "--story", "classification"], capsys)
    assert code == 1 and f"--out {str(tmp_path / 'afile')!r} is a file, not a folder" in err, err
    assert out == "" and (tmp_path / "afile").read_text() == "keep"  # refused before the story ran
    code, _, err = run(["demo", "--out", tmp_path / "afile" / "plots", "--quick"], capsys)
    assert code == 1 and "is a file, so the folder cannot be created" in err, err
