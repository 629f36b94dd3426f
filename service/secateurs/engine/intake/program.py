"""A model the server has no code for: a `torch.export` program (.pt2), read without running
anything from the file, and raised back into layers the pruner knows.

**Reading.** `torch.export.load` unpickles parts of the archive with `weights_only=False`
(pickled weights, constants, sample inputs) and custom objects with plain `pickle.loads`: a
file could run code. `read_program` refuses an archive that carries custom objects, and runs
the load with every `torch.load` held to the weights-only unpickler and every other unpickling
path of the archive reader disabled; a file that needs more is refused (`unsafe_model`) with
nothing of it run. The graph itself is JSON, read by torch's deserialiser into ATen operators.

**Raising.** The program's module calls `aten.conv2d`, `aten.batch_norm` and `aten.linear` on
parameters, where the dependency tracer needs `nn.Conv2d`, `nn.BatchNorm2d` and `nn.Linear`
modules. `raise_layers` rewrites each such call into a call of a real module (under the
original layer's name, holding the same tensors), so groups, pruning and export work as for a
model built from code. Operators with sizes baked in (a `view` to a fixed width) may not
follow a pruned width; the forward check after pruning then ends the job `unsupported_model`.
"""

from __future__ import annotations

import contextlib
import threading
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import fx, nn

from secateurs.errors import InvalidModel, UnsafeModel

_LOAD_LOCK = threading.Lock()  # the guard swaps process-wide functions while a program loads
_OBJECT_PREFIXES = ("custom_obj_", "opaque_obj_")  # constants torch would unpickle as arbitrary objects


class _RefusedUnpickling(Exception):
    pass


@contextlib.contextmanager
def _weights_only_unpickling() -> Iterator[None]:
    """While a program loads: torch.load only with the weights-only unpickler; no other unpickler."""
    from torch.export.pt2_archive import _package

    real_load = torch.load

    def weights_only_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return real_load(f, *args, **kwargs)

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise _RefusedUnpickling("the archive asks to unpickle an arbitrary object")

    class _NoPickle:
        loads = staticmethod(refuse)
        load = staticmethod(refuse)

    with _LOAD_LOCK:
        saved = (torch.load, _package.pickle, torch._C._pickle_load_obj)
        torch.load, _package.pickle, torch._C._pickle_load_obj = weights_only_load, _NoPickle, refuse
        try:
            yield
        finally:
            torch.load, _package.pickle, torch._C._pickle_load_obj = saved


def read_program(path: Path) -> torch.export.ExportedProgram:
    """The exported program in `path`; UnsafeModel when reading it would run code from it."""
    path = Path(path)
    if not path.is_file():
        raise InvalidModel(f"program file {path.name!r} does not exist", field="model.program")
    if not zipfile.is_zipfile(path):
        raise InvalidModel(f"program {path.name!r} is not a torch.export archive (.pt2, a zip)",
                           field="model.program")
    with zipfile.ZipFile(path) as archive:
        objects = [n for n in archive.namelist() if Path(n).name.startswith(_OBJECT_PREFIXES)]
    if objects:
        raise UnsafeModel(f"program {path.name!r} carries custom objects ({', '.join(objects[:3])}), which loading "
                          f"would unpickle and so run; refused without reading them", field="model.program")
    try:
        with _weights_only_unpickling():
            return torch.export.load(str(path))
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a crafted archive can raise anything
        if isinstance(exc, _RefusedUnpickling) or "weights_only" in str(exc) or "Unpickl" in str(exc):
            raise UnsafeModel(
                f"program {path.name!r} holds pickled data that is not plain tensors; refused without running it: "
                f"{str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__}",
                field="model.program") from None
        raise InvalidModel(f"program {path.name!r} cannot be read: {type(exc).__name__}: {str(exc)[:300]}",
                           field="model.program") from None


def program_module(path: Path) -> nn.Module:
    """The program's module, its layers raised to nn modules, in eval mode."""
    unlifted = read_program(path).module()
    _drop_shape_guards(unlifted)
    # A plain GraphModule of the same graph: the unlifted one refuses .eval() and .train().
    return raise_layers(fx.GraphModule(unlifted, unlifted.graph)).eval()


def _drop_shape_guards(module: fx.GraphModule) -> None:
    """The program asserts the input shapes it was exported at (batch 1, say); the engine runs it at
    other batches (calibration, measurement at the deployment's batch). Its operators decide what
    shapes it takes; a shape it cannot take fails there, with the operator's message."""
    for node in list(module.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn" or node.target in _ASSERTS:
            module.graph.erase_node(node)
    if hasattr(module, "_guards_fn"):
        delattr(module, "_guards_fn")


_ASSERTS = {torch._assert, torch.ops.aten._assert_scalar.default, torch.ops.aten._assert_tensor_metadata.default}


_LAYER_OPS = {
    torch.ops.aten.conv2d.default: "conv2d",
    torch.ops.aten.linear.default: "linear",
    torch.ops.aten.batch_norm.default: "batch_norm",
}


def raise_layers(module: fx.GraphModule) -> fx.GraphModule:
    """Rewrite aten conv2d / linear / batch_norm calls on the module's own tensors into calls of
    nn.Conv2d / nn.Linear / nn.BatchNorm2d modules named after the layer that held them."""
    graph = module.graph
    for node in list(graph.nodes):
        kind = _LAYER_OPS.get(node.target) if node.op == "call_function" else None
        if kind is None:
            continue
        tensors = [a for a in node.args[1:] if isinstance(a, fx.Node) and a.op == "get_attr"]
        if not tensors:
            continue
        owner = tensors[0].target.rsplit(".", 1)[0]
        layer = _build_layer(kind, module, node)
        if layer is None:
            continue
        _replace_owner(module, owner, layer)
        with graph.inserting_before(node):
            call = graph.call_module(owner, (node.args[0],))
        node.replace_all_uses_with(call)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    module.recompile()
    return module


def _attr(module: nn.Module, node: fx.Node) -> Any:
    """The parameter or buffer a get_attr node reads."""
    owner, _, name = str(node.target).rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, name)


def _build_layer(kind: str, module: nn.Module, node: fx.Node) -> nn.Module | None:
    args = list(node.args)

    def tensor(i: int) -> Any:
        return _attr(module, args[i]) if len(args) > i and isinstance(args[i], fx.Node) else None
    if kind == "conv2d":
        weight, bias = tensor(1), tensor(2)
        stride, padding, dilation, groups = (list(args[3:7]) + [1, 0, 1, 1][len(args[3:7]):])
        layer = nn.Conv2d(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]), stride=stride,
                          padding=padding, dilation=dilation, groups=groups, bias=bias is not None)
    elif kind == "linear":
        weight, bias = tensor(1), tensor(2)
        layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        weight, bias, mean, var = tensor(1), tensor(2), tensor(3), tensor(4)
        if mean is None or var is None or args[5]:  # training-mode batch norm: leave it as it is
            return None
        layer = nn.BatchNorm2d(mean.shape[0], eps=float(args[7]), momentum=float(args[6]), affine=weight is not None)
        layer.running_mean, layer.running_var = mean.detach().clone(), var.detach().clone()
    with torch.no_grad():
        layer.weight = nn.Parameter(weight.detach().clone()) if weight is not None else layer.weight
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().clone())
    return layer


def _replace_owner(module: nn.Module, owner: str, layer: nn.Module) -> None:
    parent, _, name = owner.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, name, layer)


def save_program(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """A program of `model` on `example` (what a client uploads; tests and the docs use it)."""
    torch.export.save(torch.export.export(model.eval(), (example,)), str(path))
    return Path(path)

