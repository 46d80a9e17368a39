"""The ``torchinn`` command line: inspect, compress and bench on small models written to a temporary
directory, numbers recounted, the compressed file loaded in a new process, and every bad input's
message and exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import torchinn as inn
from torchinn.budget import count_flops
from torchinn.cli import load_images, main

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
    code, out, err = run(["inspect", work / "net.pt", "--input-shape", SHAPE, "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    model = torch.load(work / "net.pt", weights_only=False)
    x = torch.randn(SHAPE_T)
    imodel = inn.convert(model, (x,), inn.ConvertConfig(permute=False))
    small = imodel.to_discrete()
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
    code, out, err = run(["inspect", work / "net.pt", "--input-shape", SHAPE, "--members"], capsys)
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
    out_file = work / "compressed" / "tiny.pt"
    code, out, err = run(["compress", "clinet_tiny:build", "--input-shape", SHAPE, "--target", "0.5",
                          "--seconds", "1", "--no-progress", "-o", out_file], capsys)
    assert code == 0, err
    assert "no --calibration" in err and "smoke test" in err
    report = json.loads((work / "compressed" / "tiny.report.json").read_text())
    text = (work / "compressed" / "tiny.report.txt").read_text()
    assert text in out and "relative output error" in text
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
    with torch.no_grad():
        assert torch.equal(torch.load(work / "y.pt"), small(x))


def test_compress_flops_with_calibration_images(work, capsys):
    _images(work / "images" / "sub", 5)
    (work / "images" / "notes.txt").write_text("not an image")
    out_file = work / "flops.pt"
    code, out, err = run(["compress", work / "net.pt", "--input-shape", SHAPE, "--target", "0.6",
                          "--metric", "flops", "--calibration", work / "images", "--mean", "0.5",
                          "--std", "0.25,0.25,0.25", "--seconds", "1", "--no-progress", "-o", out_file], capsys)
    assert code == 0, err
    assert "warning" not in err
    report = json.loads((work / "flops.report.json").read_text())
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
    torch.save(imodel.to_discrete().eval(), small)
    code, out, err = run(["bench", work / "net.pt", "--input-shape", SHAPE, "--compressed", small,
                          "--threads", "1", "--repeats", "3", "--warmup", "1", "--json"], capsys)
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
                          "--threads", "1", "--repeats", "2", "--warmup", "1"], capsys)
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
    (["compress", "net.pt", "--input-shape", SHAPE, "--target", "0.5", "--seconds", "0", "-o", "o.pt"],
     "seconds must be > 0"),
    (["bench", "net.pt", "--input-shape", SHAPE, "--threads", "0"], "positive integer"),
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
    (["inspect", "clinet_tiny.py:not_a_model", "--input-shape", SHAPE], "returned an int, not an nn.Module"),
    (["inspect", "clinet_tiny.py:NUMBER", "--input-shape", SHAPE], "neither an nn.Module nor a callable"),
    (["inspect", "clinet_tiny.py:missing", "--input-shape", SHAPE], "has no attribute 'missing'"),
    (["inspect", "clinet_tiny.py:broken", "--input-shape", SHAPE], "no weights here"),
    (["inspect", "no_such_module_xyz:build", "--input-shape", SHAPE], "No module named 'no_such_module_xyz'"),
    (["inspect", "nothere.py:build", "--input-shape", SHAPE], "no such file: nothere.py"),
    (["inspect", "net.pt", "--input-shape", "2,5,16,16"], "to have 3 channels"),
    (["compress", "net.pt", "--input-shape", SHAPE, "--target", "0.5", "--calibration", "nodir", "-o", "o.pt"],
     "not a directory of images"),
    (["compress", "net.pt", "--input-shape", "9,3,16,16", "--target", "0.5", "--calibration", "few", "-o", "o.pt"],
     "has 1 image(s)"),
    (["compress", "net.pt", "--input-shape", SHAPE, "--target", "0.5", "--mean", "0.5", "-o", "o.pt"],
     "give --calibration too"),
    (["bench", "net.pt", "--input-shape", "2,5,16,16"], "failed: RuntimeError"),
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
                        "--std", "0,1,1", "-o", "o.pt"], capsys)
    assert code == 1 and "--std values must be > 0" in err


def test_help_warns_about_untrusted_files_and_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "torchinn.cli", "compress", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "only load files you trust" in " ".join(done.stdout.split())
    assert "weights_only=False" in done.stdout
