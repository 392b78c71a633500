"""``compile``: ``torch.compile`` for the nets of any family, from one run config key.

``compile: null`` trains eagerly; ``compile=true`` compiles with torch's defaults (the ``inductor``
backend); a mapping sets the :class:`CompileOptions`, e.g.
``compile='{mode: max-autotune-no-cudagraphs, dynamic: null, fullgraph: false}'``.

Every top-level net of :class:`~genlab.families.base.Nets` that has parameters is compiled *in place*
(:meth:`torch.nn.Module.compile`: its ``__call__`` runs compiled, the module is not wrapped), so that
``state_dict`` keys, and therefore checkpoints, are the same with and without compilation: a run trained
compiled loads eagerly and vice versa. Methods a family calls directly (``flow.inverse(z)``) stay eager,
and so does a deep copy of a compiled net. Where a family's computation cannot run compiled (double
backward, batched vector-Jacobian products), it runs the nets eagerly there with
``torch.compiler.set_stance("force_eager")``.

Where it cannot work, the run is refused before training with the problem and the fix
(:func:`refusal`): a Python/torch build without TorchDynamo, no C++ compiler for inductor on CPU (no
Triton on a GPU), or a family that says why its nets cannot run compiled
(:attr:`Family.compile_refusal <genlab.families.base.Family.compile_refusal>`). A failure of the
compiler at a net's first call is re-raised naming the net and the fix (:class:`CompiledCall`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from genlab.families.base import Family, IncompatibleConfigError

EAGER_FIX = "compile=null to train eagerly"


@dataclass(frozen=True)
class CompileOptions:
    """The ``torch.compile`` arguments of the ``compile`` key.

    Args:
        backend: a TorchDynamo backend (``torch._dynamo.list_backends()``): ``inductor`` generates fused
            kernels (C++ on CPU, Triton on GPU); ``aot_eager`` traces the forward and backward graphs
            without generating code (no speed-up: it checks that the nets compile, in seconds).
        mode: an inductor mode (``default``, ``reduce-overhead``, ``max-autotune``,
            ``max-autotune-no-cudagraphs``), or null for the default.
        dynamic: shapes traced as dynamic (true), static (false: one compile per batch size), or
            null (torch decides: static first, dynamic once a second batch size is seen).
        fullgraph: refuse graph breaks (a net that does not trace in one graph fails at its first call).
    """

    backend: str = "inductor"
    mode: str | None = None
    dynamic: bool | None = None
    fullgraph: bool = False

    def __post_init__(self) -> None:
        backends = torch._dynamo.list_backends(exclude_tags=())
        if self.backend not in backends:
            raise IncompatibleConfigError(f"compile.backend={self.backend!r} is not a torch.compile backend. Fix: "
                                          f"one of {', '.join(backends)} (inductor for speed)")
        if self.mode is not None:
            modes = list(torch._inductor.list_mode_options())
            if self.backend != "inductor" or self.mode not in modes:
                raise IncompatibleConfigError(f"compile.mode={self.mode!r} is not a mode of the inductor backend "
                                              f"(backend: {self.backend}). Fix: the inductor backend with one of "
                                              f"{', '.join(modes)}, e.g. compile='{{mode: max-autotune-no-cudagraphs}}', or no mode")
        for key in ("dynamic", "fullgraph"):
            value = getattr(self, key)
            if not (isinstance(value, bool) or (key == "dynamic" and value is None)):
                raise IncompatibleConfigError(f"compile.{key}={value!r} must be true or false"
                                              f"{' or null' if key == 'dynamic' else ''}")

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``torch.compile``."""
        return asdict(self)


def parse(value: Any) -> CompileOptions | None:
    """The ``compile`` key as options: None for null/false, the defaults for true, else a mapping of
    :class:`CompileOptions` fields (unknown keys refused, naming the valid ones)."""
    if value is None or value is False:
        return None
    if value is True:
        return CompileOptions()
    if isinstance(value, CompileOptions):
        return value
    if not isinstance(value, Mapping):
        raise IncompatibleConfigError(f"compile={value!r} is not null, true or a mapping. Fix: pass compile=true, "
                                      "compile='{mode: max-autotune-no-cudagraphs}', or compile=null")
    known = [f.name for f in fields(CompileOptions)]
    if unknown := sorted(set(value) - set(known)):
        raise IncompatibleConfigError(f"compile has unknown keys {unknown}. Fix: use {known} (or compile=true)")
    return CompileOptions(**value)


def _cxx_candidates() -> tuple[str, ...]:
    """The C++ compilers inductor tries on CPU (``torch._inductor.config.cpp.cxx``: ``$CXX``, else ``g++``)."""
    from torch._inductor import config

    cxx = config.cpp.cxx
    return tuple(c for c in (cxx if isinstance(cxx, (list, tuple)) else (cxx,)) if c)


def cpp_compiler() -> str | None:
    """The path of the first C++ compiler inductor would use on CPU that is on ``PATH``, or None."""
    return next((found for name in _cxx_candidates() if (found := shutil.which(name))), None)


def dynamo_problem() -> str | None:
    """Why this Python/torch build cannot run ``torch.compile`` (TorchDynamo), with the fix, or None."""
    if torch._dynamo.is_dynamo_supported():
        return None
    try:
        torch._dynamo.eval_frame.check_if_dynamo_supported()
        reason = "TorchDynamo is not supported on this platform"
    except RuntimeError as err:
        reason = str(err).rstrip(".")
    return f"{reason}. Fix: a Python and torch build that torch.compile supports"


def backend_problem(options: CompileOptions, device: str) -> str | None:
    """Why ``options.backend`` cannot generate code for ``device`` here (a missing toolchain), with the
    fix, or None."""
    if options.backend != "inductor":
        return None
    if device == "cpu" and cpp_compiler() is None:
        return (f"the inductor backend compiles C++ on CPU, but no C++ compiler is on PATH (torch looks for "
                f"{' or '.join(_cxx_candidates()) or 'none'}: $CXX, else g++). Fix: install one (e.g. apt-get install "
                "g++) or point CXX at one; or compile='{backend: aot_eager}' (traces the nets, no speed-up)")
    if device == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return ("the inductor backend generates Triton kernels on a GPU, but Triton is not installed or does not "
                    "support this GPU. Fix: pip install triton (the version your torch build names)")
    return None


def _shown(options: CompileOptions) -> str:
    """``options`` as the ``compile=`` override that sets them."""
    def value(v: Any) -> str:
        return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    return "compile='{" + ", ".join(f"{k}: {value(v)}" for k, v in options.kwargs().items()) + "}'"


def refusal(family: Family, options: CompileOptions, device: str = "cpu") -> str | None:
    """The one-paragraph reason, with the fix, why ``family``'s nets cannot be compiled with ``options``
    on ``device`` (``cpu`` / ``cuda`` / ...), or None where they can."""
    for problem in (dynamo_problem(), backend_problem(options, device)):
        if problem:
            return f"{_shown(options)} cannot run: {problem}; or {EAGER_FIX}."
    if family.compile_refusal:
        return f"compile: model={family.name} cannot be compiled: {family.compile_refusal}. Fix: {EAGER_FIX}."
    return None


class CompiledCall:
    """A net's compiled ``__call__`` (its ``_compiled_call_impl``): a compiler failure at a call is
    re-raised as :class:`IncompatibleConfigError` naming the net and the fix. (A deep copy or pickle of
    the net drops it, ``nn.Module.__getstate__``: the copy runs eagerly, with its own weights.)"""

    def __init__(self, fn: Callable[..., Any], where: str) -> None:
        self.fn, self.where = fn, where

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.fn(*args, **kwargs)
        except torch._dynamo.exc.TorchDynamoException as err:
            cause = str(err).strip().splitlines()
            raise IncompatibleConfigError(
                f"torch.compile failed on {self.where} ({type(err).__name__}: {cause[0] if cause else err}). "
                "Fix: compile=null to train eagerly; with fullgraph: true, false allows graph breaks; "
                "compile='{backend: aot_eager}' tells a code-generation failure from a tracing one") from err


def compile_nets(family: Family, nets: nn.ModuleDict, value: Any, device: str | torch.device = "cpu") -> list[str]:
    """Compile, in place, every top-level net of ``nets`` that has parameters, with the ``compile`` key
    ``value`` (:func:`parse`); refuse with :class:`IncompatibleConfigError` where it cannot work
    (:func:`refusal`). Idempotent (the module calls it at every fit / test setup). Returns the names."""
    options = parse(value)
    if options is None:
        return []
    problem = refusal(family, options, torch.device(device).type)
    if problem:
        raise IncompatibleConfigError(problem)
    names = [name for name, net in nets.items() if next(net.parameters(), None) is not None]
    for name in names:
        net = nets[name]
        if not isinstance(net._compiled_call_impl, CompiledCall):
            net.compile(**options.kwargs())
            net._compiled_call_impl = CompiledCall(net._compiled_call_impl, f"nets[{name!r}] of model={family.name}")
    return names


def is_compiled(net: nn.Module) -> bool:
    """Whether ``net`` runs compiled (by :func:`compile_nets`)."""
    return isinstance(net._compiled_call_impl, CompiledCall)
