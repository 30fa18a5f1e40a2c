"""Fault injection for testing the supervisor against real failure signatures (off by default).

`--inject KIND@ITER[:always]`, repeatable. An injection fires at the start of rsl_rl iteration ITER,
on the first attempt only (env LIGHTS_OUT_ATTEMPT, default 1) unless `:always` is given.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import re
import signal
import sys
import time
from dataclasses import dataclass

KINDS = ("crash", "segfault", "oom", "stall", "hang_exit", "config_error", "exit0_early", "nccl", "slow",
         "nan", "diverge", "collapse", "progress_cr", "detached_child", "print_secret")
# Learning faults (the process stays healthy, the learning does not), done to the real optimizer and policy:
# nan: the learning rate becomes NaN, so the next update writes NaN weights (rsl_rl's NaN check then fires,
#      or with agent.check_for_nan=false the NaN losses and rewards go on into TensorBoard);
# diverge: a fixed learning rate of 10 (no adaptive schedule): the value loss explodes;
# collapse: the actor's output layer is scrambled and learning stops (learning rate 0): the reward falls and stays.
LEARNING_FAULTS = ("nan", "diverge", "collapse")
# hang_exit fires after training; slow applies from ITER on (default 0); the rest need @ITER.
# progress_cr=SECONDS@ITER: a progress bar redrawn with '\r' (no newline) for SECONDS; detached_child@ITER:
# starts a child that leaves the session and clears its environment, then the trainer stalls;
# print_secret@ITER: prints $WANDB_API_KEY in an error, as a failed logger login does, and exits 1.
ITER_OPTIONAL = ("hang_exit", "slow")
TAKES_SECONDS = ("slow", "progress_cr")

_SPEC = re.compile(r"(?P<kind>[a-z0-9_]+)(=(?P<arg>[0-9.]+))?(@(?P<iter>\d+))?(?P<always>:always)?")


@dataclass(frozen=True)
class Injection:
    kind: str
    iteration: int
    always: bool = False
    seconds: float = 0.0  # slow only


def parse_injection(text: str) -> Injection:
    """'crash@3' / 'slow=0.5@1' / 'oom@2:always' -> Injection; ValueError is one sentence for the user."""
    m = _SPEC.fullmatch(text)
    hint = "write KIND@ITER[:always] with KIND one of " + ", ".join(KINDS) + " (slow=SECONDS[@ITER])"
    if not m or m["kind"] not in KINDS:
        raise ValueError(f"invalid --inject {text!r}; {hint}")
    kind = m["kind"]
    if (kind in TAKES_SECONDS) != (m["arg"] is not None):
        raise ValueError(f"invalid --inject {text!r}; only slow and progress_cr take =SECONDS, e.g. slow=0.5@1")
    if m["iter"] is None and kind not in ITER_OPTIONAL:
        raise ValueError(f"invalid --inject {text!r}; {kind} needs the iteration, e.g. {kind}@2")
    return Injection(kind, int(m["iter"] or 0), bool(m["always"]), float(m["arg"] or 0.0))


def active(injections: list[Injection], attempt: int) -> list[Injection]:
    return [i for i in injections if i.always or attempt == 1]


def current_attempt() -> int:
    try:
        return int(os.environ.get("LIGHTS_OUT_ATTEMPT", "1"))
    except ValueError:
        return 1


def say(msg: str) -> None:
    print(f"[lights-out inject] {msg}", flush=True)


def sleep_forever(stop_requested) -> None:
    """Alive, silent, making no progress; still honours SIGTERM/SIGINT through stop_requested()."""
    sys.stdout.flush()
    while True:
        time.sleep(0.2)
        stop_requested()


def crash(it: int) -> None:
    say(f"crash at iteration {it}: SIGKILL to myself")
    os.kill(os.getpid(), signal.SIGKILL)


def segfault(it: int) -> None:
    say(f"segfault at iteration {it}")
    faulthandler.enable()  # prints "Fatal Python error: Segmentation fault" and the stack
    ctypes.string_at(0)


def oom(it: int, device: str) -> None:
    import torch

    say(f"oom at iteration {it} on {device}")
    if device.startswith("cuda"):
        hog = []
        while True:  # ends with torch's own OutOfMemoryError
            hog.append(torch.empty(1 << 30, dtype=torch.uint8, device=device))
    raise torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which "
        "1.06 GiB is free. Of the allocated memory 76.41 GiB is allocated by PyTorch, and 512.00 MiB is reserved "
        "by PyTorch but unallocated. (simulated on CPU by --inject oom)"
    )


def config_error(it: int, agent_cfg: dict) -> None:
    say(f"config_error at iteration {it}")
    # A real lookup of a key that the agent configuration does not have.
    return agent_cfg["policy"]["init_noise_std"]


def exit0_early(it: int) -> None:
    say(f"exit0_early at iteration {it}")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def learning_fault(kind: str, it: int, alg) -> None:
    """One of LEARNING_FAULTS on rsl_rl's PPO instance `alg`."""
    import torch

    say(f"{kind} at iteration {it}")
    if kind == "nan":
        lr = float("nan")
    elif kind == "diverge":
        lr = 10.0
    else:  # collapse
        lr = 0.0
        with torch.no_grad():
            last = [m for m in alg.actor.modules() if isinstance(m, torch.nn.Linear)][-1]
            last.weight.copy_(torch.randn_like(last.weight) * 50.0)
            last.bias.fill_(5.0)
    alg.schedule = "fixed"  # the adaptive schedule would undo the change at the next update
    alg.learning_rate = lr
    for group in alg.optimizer.param_groups:
        group["lr"] = lr
def progress_cr(it: int, seconds: float) -> None:
    say(f"progress_cr at iteration {it}: {seconds:.0f}s of a '\\r' progress bar")
    deadline = time.monotonic() + seconds
    k = 0
    while time.monotonic() < deadline:
        k += 1
        sys.stdout.write(f"\rpreparing assets {k}")
        sys.stdout.flush()
        time.sleep(0.1)
    sys.stdout.write("\n")
    sys.stdout.flush()


def detached_child(it: int) -> int:
    """A descendant only its parent pid ties to the run: new session, empty environment."""
    import subprocess

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env={},
                             start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    say(f"detached_child at iteration {it}: pid {child.pid}")
    return child.pid


def print_secret(it: int) -> None:
    say(f"print_secret at iteration {it}")
    print(f"wandb: ERROR the API key {os.environ.get('WANDB_API_KEY', '')} was rejected", flush=True)
    sys.exit(1)
