"""Failure signatures: which log lines name which failure class.

The table is data. Every line of every trainer log goes through `SignatureMatcher.match`, so the
common case (a line that matches nothing) costs only substring tests of the table's anchors; the
rare line holding an anchor is tested against the per-class regexes to learn every class it names.

Classes that are verdicts: oom, segfault, nccl, cuda_error, config_error. Three more are not:
`child_failed` (torchrun's ChildFailedError wraps whatever killed a worker, so classify decides
what it means), `rank_killed` (torchrun saw a worker die of SIGKILL/SIGABRT/SIGTERM) and `warning`
(recorded, never fatal).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

# (class, anchor, regex): `anchor` is a literal every match contains (the per-line fast path is a
# plain substring test of the anchors); `regex` is None when the anchor itself is the whole pattern.
# Order matters only for display; precedence between classes lives in classify.py.
SIGNATURES: tuple[tuple[str, str, str | None], ...] = (
    ("oom", "OutOfMemoryError", None),  # torch.OutOfMemoryError, torch.cuda.OutOfMemoryError
    ("oom", "CUDA out of memory", None),
    ("oom", "out of memory", r"CUDA error(?: \d+)?: out of memory"),
    ("oom", "CUDA_ERROR_OUT_OF_MEMORY", None),
    ("oom", "PxgCudaDeviceMemoryAllocator fail to allocate memory", None),
    ("oom", "cudaErrorMemoryAllocation", None),
    ("oom", "Array allocation failed on device", None),  # NVIDIA Warp
    ("oom", "ERROR_OUT_OF_DEVICE_MEMORY", None),  # Vulkan (RTX renderer)
    ("oom", "CUBLAS_STATUS_ALLOC_FAILED", None),
    ("oom", "RESOURCE_EXHAUSTED: Out of memory", None),  # JAX / XLA
    ("oom", "malloc(): ", None),
    # host memory (a CPU run, or pinned buffers on a GPU run): torch's allocator, Python's, C++'s
    ("oom", "DefaultCPUAllocator: can't allocate memory", None),
    ("oom", "MemoryError", r"^(?:\w+\.)*MemoryError\b"),
    ("oom", "std::bad_alloc", None),  # glibc heap failures: transient memory pressure, retried like an OOM
    ("segfault", "Segmentation fault", None),  # also "Fatal Python error: ...", "(core dumped)"
    ("segfault", "Illegal instruction", None),
    ("segfault", "Signal 11 (SIGSEGV)", None),  # torchrun's summary of a worker killed by SIGSEGV
    ("segfault", "Fatal Python error: Bus error", None),
    ("nccl", "ProcessGroupNCCL", None),
    ("nccl", "NCCL error", None),
    ("nccl", "nccl", r"nccl(?:Internal|System|UnhandledCuda|Remote|InvalidUsage|InvalidArgument)Error"),
    ("nccl", "Watchdog caught collective operation timeout", None),
    ("nccl", "DistBackendError", None),
    ("nccl", "DistNetworkError", None),
    # gloo (CPU collectives): only its failures; gloo's hostname warnings are harmless.
    ("nccl", "gloo/transport/tcp/",
     r"gloo/transport/tcp/[\w.]+:\d+\] (?:Connection closed by peer|Timed out waiting|Connection refused|Read error)"),
    ("nccl", "ProcessGroupGloo", r"ProcessGroupGloo.*(?:[Ee]rror|failed|[Tt]imed out)"),
    ("nccl", "gloo::EnforceNotMet", None),
    # "CUDA error: an illegal memory access was encountered", "CUDA error 700: ...", but not the OOM spellings
    ("cuda_error", "CUDA error", r"CUDA error(?: \d+)?: (?!out of memory|cudaErrorMemoryAllocation)"),
    ("cuda_error", "CUDA_ERROR_", r"CUDA_ERROR_(?!OUT_OF_MEMORY)[A-Z_]+"),
    ("cuda_error", "cudaError", r"cudaError(?!MemoryAllocation)[A-Z]\w+"),
    ("cuda_error", "cuEventRecord failed", None),
    ("cuda_error", "CUDNN_STATUS_", r"CUDNN_STATUS_(?:INTERNAL_ERROR|EXECUTION_FAILED|MAPPING_ERROR|NOT_INITIALIZED)"),
    ("cuda_error", "CUBLAS_STATUS_", r"CUBLAS_STATUS_(?:EXECUTION_FAILED|INTERNAL_ERROR|NOT_INITIALIZED)"),
    ("cuda_error", "illegal memory access was encountered", None),
    # Isaac Sim refuses to start until its EULA is accepted through OMNI_KIT_ACCEPT_EULA.
    # (An env dump showing the variable set, "OMNI_KIT_ACCEPT_EULA=YES", is not a failure.)
    ("config_error", "OMNI_KIT_ACCEPT_EULA", r"OMNI_KIT_ACCEPT_EULA(?!=(?i:1|y|yes|true)\b)"),
    ("config_error", "Do you accept the EULA?", None),
    # torch (or an omni module) imported before AppLauncher started the app breaks Isaac Lab's imports.
    ("config_error", "No module named '", r"No module named '(?:omni|isaacsim|isaaclab|pxr|carb)[\w.]*'"),
    # argparse (and the reference trainer's own checks): "train.py: error: unrecognized arguments: --foo".
    # Not Slurm's own "slurmstepd-<node>: error: *** JOB n CANCELLED ***", written on every cancel/time limit,
    # nor srun's report of how a node's task ended ("srun: error: lo-n2: task 1: Interrupt").
    ("config_error", ": error: ", r"^(?!slurmstepd|srun:)[\w.-]+: error: "),
    # learning blew up: rsl_rl's NaN check ("... contains NaN values"), or a NaN/inf loss or reward it printed
    ("nan", "NaN values", r"contains? NaN values"),
    ("nan", "expects all elements of std >= 0.0", None),  # torch's Normal() on NaN policy weights
    ("nan", "nan", r"Mean [\w ]*(?:loss|reward):\s+-?nan\s*$"),
    ("nan", "inf", r"Mean [\w ]*(?:loss|reward):\s+-?inf\s*$"),
    ("child_failed", "ChildFailedError", None),
    # torchrun's report of a worker killed by a signal from outside (OOM killer, kill -9, a scheduler):
    # the process died, not the collective; classify tells it apart from an NCCL failure.
    ("rank_killed", "received by PID", r"Signal (?:9|6|15) \(SIG(?:KILL|ABRT|TERM)\) received by PID"),
    ("rank_killed", "failed (exitcode: -", r"failed \(exitcode: -(?:9|6|15)\)"),
    ("warning", "Patch buffer overflow", None),  # "PhysX error: Patch buffer overflow detected, ..."
    ("warning", "buffer overflow", r"(?:[Cc]ontact|[Ff]ound|[Pp]air) buffer overflow"),
    ("warning", "ollision stack overflow", None),
)

CLASSES = tuple(dict.fromkeys(cls for cls, _, _ in SIGNATURES))
# Classes whose hit means the run is lost (the monitor stops the run on them).
FATAL_CLASSES = frozenset({"oom", "segfault", "nccl", "cuda_error", "nan"})  # nan: its weights are lost anyway
# Keys accepted in cfg.monitor.extra_patterns besides the table's classes: `completed` lines act
# as the trainer's end marker, for trainers that do not print "Training time:".
EXTRA_KEYS = frozenset(CLASSES) | {"completed"}


@dataclass(frozen=True)
class SignatureMatcher:
    """The signature table (plus a project's extra patterns) compiled for the per-line fast path."""

    anchors: tuple[str, ...]
    extra: re.Pattern | None  # extra patterns have no anchor: one combined regex, searched on every line
    per_class: tuple[tuple[str, re.Pattern], ...]

    def match(self, line: str) -> list[str]:
        """Every class `line` names, in table order; [] for the ordinary line.

        The ordinary line costs a few dozen substring tests (about 1 us), which is why the table
        carries anchors instead of relying on one big alternation (5x slower in `re`)."""
        for anchor in self.anchors:
            if anchor in line:
                break
        else:
            if self.extra is None or self.extra.search(line) is None:
                return []
        return [cls for cls, rx in self.per_class if rx.search(line)]


def compile_matcher(extra_patterns: dict[str, list[str]] | None = None) -> SignatureMatcher:
    """Compile the table with `extra_patterns` (class -> regexes) added; ValueError names a bad entry."""
    table: dict[str, list[str]] = {}
    for cls, anchor, rx in SIGNATURES:
        table.setdefault(cls, []).append(rx or re.escape(anchor))
    extras: list[str] = []
    for cls, pats in (extra_patterns or {}).items():
        if cls not in EXTRA_KEYS:
            raise ValueError(
                f"monitor.extra_patterns key {cls!r} is not a signature class; "
                f"use one of {', '.join(sorted(EXTRA_KEYS))}"
            )
        for pat in pats:
            try:
                re.compile(pat)
            except re.error as e:
                raise ValueError(
                    f"monitor.extra_patterns[{cls!r}] regex {pat!r} does not compile ({e}); fix the regex") from None
        table.setdefault(cls, []).extend(pats)
        extras.extend(pats)
    per_class = tuple((cls, re.compile("|".join(f"(?:{p})" for p in pats))) for cls, pats in table.items() if pats)
    anchors = tuple(dict.fromkeys(anchor for _, anchor, _ in SIGNATURES))
    extra = re.compile("|".join(f"(?:{p})" for p in extras)) if extras else None
    return SignatureMatcher(anchors, extra, per_class)


DEFAULT_MATCHER = compile_matcher()

# Python traceback framing, shared with scan.py.
TRACEBACK_START = "Traceback (most recent call last):"
# "KeyError: 'x'", "torch.OutOfMemoryError: ...", "omegaconf.errors.MissingMandatoryValue: ...": a dotted
# identifier at column 0 followed by ':' (or nothing). Lines from other output rarely look like this.
EXCEPTION_LINE = re.compile(r"^(?P<name>[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*)(?::(?: (?P<msg>.*))?)?$")
# torchrun / torch.distributed prefixes on worker output: "[rank0]: ", "[default0]:".
RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s?")


# A final line without a message ("KeyboardInterrupt") is only taken when it reads like an exception,
# so that a stray word from interleaved output does not end a traceback.
BARE_EXCEPTION_SUFFIXES = ("Error", "Exception", "Interrupt", "Exit", "Failure")


def exception_name(line: str) -> str | None:
    """The exception's class name (last dotted part) if `line` looks like a traceback's final line."""
    m = EXCEPTION_LINE.match(line)
    if m is None:
        return None
    name = m["name"].rsplit(".", 1)[-1]
    if ":" not in line and not name.endswith(BARE_EXCEPTION_SUFFIXES):
        return None
    return name


def scan_errors(lines: Iterable[str], matcher: SignatureMatcher = DEFAULT_MATCHER) -> list[tuple[int, str, str]]:
    """(1-based line number, class, line) for every signature hit and every traceback's exception line
    (class 'exception'); what `read_logs.py errors LOG` prints."""
    found: list[tuple[int, str, str]] = []
    in_traceback = False
    for no, raw in enumerate(lines, 1):
        line = raw.rstrip("\r\n")
        bare = RANK_PREFIX.sub("", line)
        if in_traceback:
            if bare[:1] in (" ", "\t"):
                continue  # a frame or its source line: code, not an error message
            if bare and exception_name(bare):
                found.append((no, "exception", line))
                in_traceback = False
        for cls in matcher.match(line):
            found.append((no, cls, line))
        if bare.startswith(TRACEBACK_START):
            in_traceback = True
    return found

