"""Child process of tests/io/test_serialize_fuzz.py::test_crafted_graphs_specs_and_guards: load and run
mutated, re-signed .inn files under a 4 GiB address-space limit, reporting each case on stdout.

``python serialize_fuzz_worker.py WORKDIR SEED CASES``: WORKDIR holds ``models.pt`` (a list of
(file bytes, input, expected outputs)). Per case it prints ``START i what`` before loading, then
``OK i outcome`` or ``BAD i reason``; ``DONE`` at the end. A crash or a hang shows as a START
without its OK, which the parent names.
"""

from __future__ import annotations

import copy
import json
import random
import resource
import struct
import sys
from pathlib import Path
from typing import Any

resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

import torch  # noqa: E402 - imported under the limit on purpose
from torch.utils import _pytree as pytree  # noqa: E402

import torchinn as inn  # noqa: E402
from torchinn.io.format import checksum  # noqa: E402
from torchinn.io.ops import ALLOWED  # noqa: E402

ATEN = sorted({n if "." in n else n + ".default" for n in torch._C._dispatch_get_all_op_names()
               if n.startswith("aten::")})


def _split(data: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header: dict, body: bytes) -> bytes:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + body


def _value(rng: random.Random, names: list[str], depth: int = 0) -> Any:
    kind = rng.choice(["node", "node", "node", "int", "bigint", "float", "list", "none", "bool", "str", "dtype"])
    if kind == "node" and names:
        return {"n": rng.choice(names)}
    if kind == "int" or kind == "node":
        return rng.choice([-1, 0, 1, 2, 3, 4, 8])
    if kind == "bigint":
        return rng.choice([65536, 2**31, 2**62, -(2**62), 10**12])
    if kind == "float":
        return rng.choice([0.5, -2.0, 1e30, {"f": "inf"}, {"f": "nan"}])
    if kind == "list" and depth < 2:
        return {"l": [_value(rng, names, depth + 1) for _ in range(rng.randint(0, 4))]}
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "str":
        return rng.choice(["constant", "sum", "reflect", "none", ""])
    if kind == "dtype":
        return {"dtype": rng.choice(["float64", "int64", "bool", "complex64", "qint8", "uint8"])}
    return None


def _graph_case(rng: random.Random, meta: dict) -> tuple[str, bool, bool]:
    """Change a node or add one: returns (what, whether an off-list target was drawn, whether a
    well-formed result may compute other outputs)."""
    graph = meta["graph"]
    calls = [i for i, n in enumerate(graph) if n["op"] == "call_function"]
    target = "aten::" + rng.choice(ATEN)
    action = rng.choice(["retarget", "insert", "insert", "args"])
    if action == "retarget":
        i = rng.choice(calls)
        graph[i]["target"] = target
        what, wired = f"retarget node {graph[i]['name']} to {target}", True
    elif action == "args":
        i = rng.choice(calls)
        names = [n["name"] for n in graph[:i]]
        args = graph[i]["args"]["t"]
        if args:
            args[rng.randrange(len(args))] = _value(rng, names)
        else:
            args.append(_value(rng, names))
        return f"new argument of node {graph[i]['name']}: {json.dumps(args)[:200]}", False, True
    else:
        i = rng.randint(min(calls), len(graph) - 1)
        names = [n["name"] for n in graph[:i]]
        node = {"op": "call_function", "name": "fuzz", "target": target,
                "args": {"t": [_value(rng, names) for _ in range(rng.randint(0, 5))]}, "kwargs": {"d": {}}}
        graph.insert(i, node)
        wired = rng.random() < 0.3
        if wired:  # make the output use it
            out = graph[-1]["args"]["t"][0]
            next(iter(out.values()))[0] = {"n": "fuzz"}
        what = f"insert {target}{json.dumps(node['args']['t'])[:200]} at {i}{' (the output)' if wired else ''}"
    return what, target[6:] not in ALLOWED, wired


_SPECS = [
    '[1, {"type": "collections.defaultdict", "context": "{\\"default_factory_module\\": \\"os\\", '
    '\\"default_factory_name\\": \\"getcwd\\", \\"dict_context\\": [\\"a\\"]}", "children_spec": '
    '[{"type": null, "context": null, "children_spec": []}]}]',
    '[1, {"type": "builtins.dict", "context": "[{\\"__enum__\\": true, \\"fqn\\": \\"os:sep\\", \\"name\\": \\"A\\"}]",'
    ' "children_spec": [{"type": null, "context": null, "children_spec": []}]}]',
    '[1, {"type": "collections.OrderedDict", "context": "[\\"a\\"]", "children_spec": '
    '[{"type": null, "context": null, "children_spec": []}]}]',
    '[1, {"type": "collections.deque", "context": "null", "children_spec": []}]',
    '[1, {"type": "transformers.modeling_outputs.CausalLMOutputWithPast", "context": "[\\"nope\\"]", '
    '"children_spec": [{"type": null, "context": null, "children_spec": []}]}]',
    "[1, null]", "[]", "", "null", "[1, {}]",
]


def _spec_case(rng: random.Random, meta: dict) -> str:
    field = rng.choice(["in_spec", "out_spec"])
    if rng.random() < 0.4:
        meta[field] = rng.choice(_SPECS)
        return f"{field} = {meta[field][:120]}"
    data = json.loads(meta[field])
    node = data[1]
    while node["children_spec"] and rng.random() < 0.6:
        node = rng.choice(node["children_spec"])
    key = rng.choice(["type", "context", "children_spec"])
    node[key] = rng.choice([None, "builtins.tuple", "builtins.dict", "builtins.list", "builtins.set", "null",
                            '["a"]', "[1, 2]", [], [copy.deepcopy(node)], 3])
    meta[field] = json.dumps(data)
    return f"{field}: {key} = {json.dumps(node[key])[:120]}"


def _guard_expr(rng: random.Random, num_inputs: int, depth: int = 0) -> Any:
    if depth > 4 or rng.random() < 0.3:
        return rng.choice([["dim", rng.randrange(num_inputs), rng.randrange(4)], ["input", rng.randrange(num_inputs)],
                           0, 1, 2, 64, 10**18, 2**80, -5, 1.5, "x", None, True, {"f": "inf"}])
    op = rng.choice(["add", "mul", "floordiv", "mod", "pow", "eq", "ne", "lt", "le", "gt", "ge", "and", "or",
                     "not", "max", "min"])
    n = 1 if op == "not" else 2
    return [op] + [_guard_expr(rng, num_inputs, depth + 1) for _ in range(n)]


def _guard_case(rng: random.Random, meta: dict) -> str:
    expr = _guard_expr(rng, 1)
    meta.setdefault("input_guards", []).append({"expr": expr, "text": "fuzz", "kind": rng.choice(
        ["shape", "shape", "range", "value"])})
    return f"guard {json.dumps(expr)[:200]}"


def main() -> None:
    from safetensors.torch import load_file, save_file

    work, seed, cases = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    models = torch.load(work / "models.pt", weights_only=True)
    rng = random.Random(seed)
    path = work / "case.inn"
    for case in range(cases):
        data, x, expected = models[case % len(models)]
        header, _ = _split(bytes(data))
        meta = json.loads(header["__metadata__"]["torchinn"])
        (work / "src.inn").write_bytes(bytes(data))
        tensors = load_file(work / "src.inn")
        kind = rng.choice(["graph", "graph", "graph", "spec", "guard"])
        off_list = may_differ = False
        if kind == "graph":
            what, off_list, may_differ = _graph_case(rng, meta)
        elif kind == "spec":
            what = _spec_case(rng, meta)
        else:
            what = _guard_case(rng, meta)
        meta.pop("sha256", None)
        meta["sha256"] = checksum(meta, tensors)
        save_file(tensors, str(path), metadata={"torchinn": json.dumps(meta)})
        print(f"START {case} {what}", flush=True)
        try:
            model = inn.load(path)
        except inn.FormatError:
            print(f"OK {case} format-error", flush=True)
            continue
        except Exception as err:  # noqa: BLE001 - reported to the parent
            print(f"BAD {case} load raised {type(err).__name__}: {str(err)[:300]}", flush=True)
            continue
        if off_list:
            print(f"BAD {case} loaded a graph calling an operator off the list", flush=True)
            continue
        before = x.clone()
        try:
            with torch.no_grad():
                out = model(x)
        except Exception as err:  # noqa: BLE001 - a well-formed graph may fail on this input
            outcome = f"forward raised {type(err).__name__}"
        else:
            leaves, want = pytree.tree_leaves(out), pytree.tree_leaves(expected)
            same = len(leaves) == len(want) and all(
                isinstance(a, torch.Tensor) and a.shape == b.shape and torch.equal(a, b) for a, b in zip(leaves, want))
            if not same and not may_differ:
                # an inserted node, a spec or a guard that loads must not change what the model computes
                print(f"BAD {case} loads and computes other outputs", flush=True)
                continue
            outcome = "same outputs" if same else "a well-formed graph computing otherwise"
        if not torch.equal(x, before):
            print(f"BAD {case} the forward changed the caller's input", flush=True)
            continue
        print(f"OK {case} loaded, {outcome}", flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
