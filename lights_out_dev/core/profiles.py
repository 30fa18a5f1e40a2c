"""Trainer profiles: everything the runner assumes about a trainer's command line, as data.

A profile says how a trainer is started (a script file or `python -m module`), how it spells each
concept the runner passes (task, envs, seed, iterations, device, run name, ...; any of them can be
dropped), how it is resumed from one of its own checkpoints, how it runs on several GPUs, and what it
does when interrupted. Launchers name a profile (`trainer = "isaaclab3"` in
`[tool.lights_out.launchers.<kind>]`); projects add their own under `[tool.lights_out.trainers.<name>]`,
usually `extends` a built-in and changing a few keys.

Built-ins, each read off the real trainer:

- `reference`: the reference trainer in `workloads/` (Isaac Lab 2.x's command line, saves on SIGINT).
- `isaaclab2`: Isaac Lab 2.x `scripts/reinforcement_learning/rsl_rl/train.py`. `--headless`; resume is
  `--resume --load_run <run dir regex> --checkpoint <file regex>` (both are regexes matched inside
  `logs/rsl_rl/<experiment>/`; an absolute path matches nothing, and a bare `--checkpoint` without
  `--resume` is ignored); the policy's device is `agent.device` (env and policy differ otherwise);
  no checkpoint on any signal.
- `isaaclab3`: Isaac Lab 3.x `python -m isaaclab train --rl_library rsl_rl`. No `--headless`, no
  `--resume`/`--load_run` (exit 2); `--checkpoint <file>` loads weights, optimizer and iteration;
  `agent.device=cuda:N` keeps the policy on the run's GPU; multi-GPU ranks run
  `isaaclab_rl.entrypoints.multigpu` with one `--run_timestamp` so every rank names one run directory;
  SIGINT is swallowed (exit 0, no checkpoint): a time limit is met by stopping right after a checkpoint.
  No play entry: 3.0's `play` runs until interrupted, writes no metrics and exports ONNX first, so it
  cannot evaluate a checkpoint unattended (no `-play` task is generated).
- `sb3`: a Stable-Baselines3 script (workloads/third_party/sb3_ppo.py): its own argparse flags, progress,
  FPS and reward from SB3's stdout table, TensorBoard tags `rollout/ep_rew_mean` / `time/fps`,
  `CheckpointCallback` files `rl_model_<timesteps>_steps.zip`, resume `--resume <file>` with the timesteps
  left; SB3 prints no end marker, so exit 0 is completion.
- `generic`: any command: no flags passed, judged by exit code and output alone; what it cannot see
  (progress, FPS, reward, checkpoints) stays unknown, and a retry starts over.

A profile also says how its output is read (`observe`), where its checkpoints are (`checkpoint_dir`),
what a resumed run is told is left (`resume_budget`), which TensorBoard tags are reward/FPS/episode
length (`metrics`), and env vars per attempt (`attempt_env`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from lights_out_dev.core.models import StrictModel
from lights_out_dev.errors import LightsOutError

DEFAULT_CHECKPOINT_PATTERN = r"model_(\d+)\.pt"  # rsl_rl's model_<iteration>.pt


UNIT_LABELS = {"iteration": "it", "timestep": "steps"}


def checkpoint_iteration(path: str | Path, pattern: str = DEFAULT_CHECKPOINT_PATTERN) -> int | None:
    """The iteration (or timestep) a checkpoint file's name carries as `pattern`'s group 1; None for any other name."""
    m = re.fullmatch(pattern, Path(path).name)
    return int(m.group(1)) if m and m.groups() else None


def checkpoints_in(directory: str | Path | None, pattern: str = DEFAULT_CHECKPOINT_PATTERN) -> list[str]:
    """The checkpoint files in one directory, oldest iteration first; [] when there is no such directory."""
    if not directory or not Path(directory).is_dir():
        return []
    found = [(it, str(p)) for p in Path(directory).iterdir() if (it := checkpoint_iteration(p, pattern)) is not None]
    return [p for _, p in sorted(found)]


class TrainerFlags(StrictModel):
    """The trainer's spelling of each concept the runner passes; None (or "" in TOML) drops it."""

    task: str | None = "--task"
    num_envs: str | None = "--num_envs"
    seed: str | None = "--seed"
    max_iterations: str | None = "--max_iterations"
    device: str | None = "--device"
    run_name: str | None = "--run_name"
    experiment_name: str | None = "--experiment_name"
    run_id: str | None = None
    headless: str | None = None
    distributed: str | None = "--distributed"

    @field_validator("*", mode="before")
    @classmethod
    def _empty_drops(cls, v):
        return None if v == "" else v  # TOML has no null: "" is how a table drops a flag


class Observe(StrictModel):
    """How the runner reads a trainer's output. Regexes are searched in each log line (ANSI codes and a
    multi-GPU rank prefix removed); a number is the group named `value` (progress: `done`, optionally
    `total`; run_dir: `path`), else group 1. A regex set here wins over the built-in parser's number."""

    parser: Literal["rsl_rl", "none"] = Field(default="rsl_rl", description="built-in line parser: rsl_rl's "
                                              "per-iteration block and Isaac Lab's run-directory lines; none = "
                                              "only the regexes below")
    progress: str | None = Field(default=None, description="iterations or timesteps done (and of how many)")
    unit: Literal["iteration", "timestep"] = Field(default="iteration", description="what progress counts; "
                                                   "status lines show it as `it` or `steps`")
    fps: str | None = None
    reward: str | None = None
    episode_length: str | None = None
    run_dir: str | None = Field(default=None, description="the run's log directory (TensorBoard events)")
    tracker_url: str | None = Field(default=r"View run at (?P<url>https?://\S+)",
                                    description="the experiment tracker's run URL (group `url`; W&B's line by "
                                    "default), shown in the ledger")
    completion: list[str] | Literal["exit0"] = Field(
        default_factory=lambda: ["Training time:"],
        description="regexes that mean training finished (the reason names the one that matched), or "
                    "'exit0' for a trainer that prints no marker: exit 0 with no error is completion")

    @property
    def unit_label(self) -> str:
        """The unit as status lines print it before `done/total`."""
        return UNIT_LABELS[self.unit]

    @field_validator("completion", mode="before")
    @classmethod
    def _markers_or_exit0(cls, v):
        if isinstance(v, str) and v != "exit0":
            raise ValueError(f"{v!r} is neither 'exit0' nor a list of marker regexes (e.g. ['Training time:'])")
        for marker in v if isinstance(v, list) else []:
            cls._compiles(marker)
        return v

    @field_validator("progress", "fps", "reward", "episode_length", "run_dir", "tracker_url")
    @classmethod
    def _compiles(cls, v):
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"{v!r} is not a regular expression ({e})") from None
        return v


class MetricTags(StrictModel):
    """The TensorBoard tags that mean reward, FPS and episode length for this trainer. Plans, promotion and
    evaluation name metrics by rsl_rl's tags (`Train/mean_reward`, ...) or by `reward`/`fps`/`episode_length`;
    both mean these tags (see `resolve`). A number the log does not print (no `observe` regex, no built-in
    parser: skrl's reward) is read from its tag while the run goes; "" = no such tag."""

    reward: str = "Train/mean_reward"
    fps: str = "Perf/total_fps"
    episode_length: str = "Train/mean_episode_length"

    def resolve(self, name: str) -> str:
        """The tag a metric name means for this trainer; any other tag is itself."""
        canonical = {"reward": "reward", "fps": "fps", "episode_length": "episode_length",
                     "Train/mean_reward": "reward", "Perf/total_fps": "fps",
                     "Train/mean_episode_length": "episode_length"}
        return getattr(self, canonical[name]) if name in canonical else name


class TrainerProfile(StrictModel):
    """One trainer's command line and behaviour. Templates may use {checkpoint} (absolute path of a
    checkpoint file), {checkpoint_name}, {checkpoint_regex} (^name$, escaped), {run_dir} (its run
    directory), {run_dir_name}, {run_dir_regex}, {device} and {stamp} (a launch timestamp)."""

    description: str = ""
    prefix: list[str] | None = Field(default=None, description="interpreter / wrapper of this trainer's "
                                     "install, e.g. ['.venv-isaaclab3/bin/python']; None = the launcher's")
    module: str | None = Field(default=None, description="started as `python -m <module>`; else `script`")
    script: str | None = Field(default=None, description="trainer script, relative to the project root")
    script_args: list[str] = Field(default_factory=list, description="fixed args right after script/module")
    play_module: str | None = Field(default=None, description="evaluation entry point as `python -m`")
    play_script: str | None = Field(default=None, description="evaluation script file name, beside the "
                                    "training script; neither this nor play_module = no -play task")
    play_script_args: list[str] = Field(default_factory=list)
    flags: TrainerFlags = Field(default_factory=TrainerFlags)
    device_format: Literal["cuda:N", "N"] = Field(
        default="cuda:N", description="what the device flag gets for GPU N (the CPU is always 'cpu')")
    device_args: list[str] = Field(default_factory=list, description="more items naming the device, "
                                   "e.g. ['agent.device={device}'] so the policy follows the environment")
    multi_gpu: Literal["torchrun", "none"] = "torchrun"
    multi_gpu_module: str | None = Field(default=None, description="what each torchrun rank runs when it "
                                         "is not the single-GPU entry point")
    multi_gpu_script_args: list[str] | None = None
    multi_gpu_args: list[str] = Field(default_factory=list, description="added to multi-GPU launches")
    resume_args: list[str] = Field(default_factory=lambda: ["--checkpoint", "{checkpoint}"],
                                   description="continue from one of the run's own checkpoints")
    finetune_args: list[str] = Field(default_factory=lambda: ["--checkpoint", "{checkpoint}"],
                                     description="start from another run's checkpoint")
    saves_on_interrupt: bool = Field(default=False, description="SIGINT makes it save a checkpoint and exit; "
                                     "else a time limit stops it right after a checkpoint it saved itself")
    save_proven_after: int = Field(default=2, ge=0, description="how far progress must be past a checkpoint's "
                                   "number before that save has surely returned (a time limit then stops right "
                                   "after it): rsl_rl prints an iteration, then saves it (2); SB3's "
                                   "CheckpointCallback saves inside the rollout its table reports afterwards (0)")
    newton_selector: str = "physics=newton"
    checkpoint_pattern: str = Field(default=DEFAULT_CHECKPOINT_PATTERN,
                                    description="checkpoint file names; group 1 is the iteration or timestep")
    run_dir: str | None = Field(default=None, description="the run directory when its log names none: a template "
                                "of {run_name}, relative to the project root")
    checkpoint_dir: str = Field(default="{run_dir}", description="where checkpoints live: a template of "
                                "{run_dir} (the run directory the log names) and {run_name}; relative to the "
                                "project root")
    resume_budget: Literal["remaining", "total", "none"] = Field(
        default="remaining", description="what the max_iterations flag gets on resume: what is left after the "
        "checkpoint (rsl_rl, SB3's reset_num_timesteps=False), the original total (a trainer that counts from "
        "its checkpoint itself), or nothing (the flag is dropped)")
    counts_from_zero: bool = Field(default=False, description="a resumed run counts its progress and names its "
                                   "checkpoints from 0 (skrl's trainer); the runner adds the checkpoint's step")
    observe: Observe = Field(default_factory=Observe)
    metrics: MetricTags = Field(default_factory=MetricTags)
    env: dict[str, str] = Field(default_factory=dict, description="literal env vars every launch gets")
    attempt_env: dict[str, str] = Field(default_factory=dict, description="env templates per attempt, of {rid} "
                                        "(stable across the run's attempts), {run_name} and {attempt}; e.g. "
                                        "WANDB_RUN_ID = \"{rid}\" with WANDB_RESUME = \"allow\"")

    def checkpoint_iteration(self, path: str | Path) -> int | None:
        return checkpoint_iteration(path, self.checkpoint_pattern)

    def checkpoint_dir_for(self, root: Path, run_dir: str | None, run_name: str | None) -> Path | None:
        """The directory an attempt's checkpoints are in; None while a name it needs is unknown."""
        names = set(re.findall(r"{(\w*)}", self.checkpoint_dir))
        if ("run_dir" in names and not run_dir) or ("run_name" in names and not run_name):
            return None
        return root / self.checkpoint_dir.format(run_dir=run_dir or "", run_name=run_name or "")

    def attempt_environment(self, rid: str, run_name: str, attempt: int) -> dict[str, str]:
        return {k: v.format(rid=rid, run_name=run_name, attempt=attempt) for k, v in self.attempt_env.items()}


def fill(templates: list[str], **values: str) -> list[str]:
    """Templates with {name} replaced; every name must be known (a typo is a config error upstream)."""
    return [t.format(**values) for t in templates]


def checkpoint_values(checkpoint: str) -> dict[str, str]:
    path = Path(checkpoint)
    return dict(checkpoint=str(path), checkpoint_name=path.name, checkpoint_regex=f"^{re.escape(path.name)}$",
                run_dir=str(path.parent), run_dir_name=path.parent.name,
                run_dir_regex=f"^{re.escape(path.parent.name)}$")


TEMPLATE_NAMES = frozenset(checkpoint_values("/x/y").keys() | {"device", "stamp"})
CHECKPOINT_DIR_NAMES = frozenset({"run_dir", "run_name"})
ATTEMPT_ENV_NAMES = frozenset({"rid", "run_name", "attempt"})
_ISAAC_KIT_ENV = {"OMNI_KIT_ACCEPT_EULA": "yes", "PYTHONNOUSERSITE": "1"}

BUILTIN_PROFILES: dict[str, dict] = {
    "reference": dict(
        description="the reference trainer in workloads/ (rsl_rl PPO; Isaac Lab 2.x's command line)",
        script="workloads/train.py",
        play_script="play.py",
        flags=dict(run_id="--rid", headless="--headless"),
        resume_args=["--resume", "--load_run", "{run_dir_regex}", "--checkpoint", "{checkpoint_regex}"],
        finetune_args=["--checkpoint", "{checkpoint}"],
        saves_on_interrupt=True,
    ),
    "isaaclab2": dict(
        description="Isaac Lab 2.x scripts/reinforcement_learning/rsl_rl/train.py",
        script="scripts/reinforcement_learning/rsl_rl/train.py",
        play_script="play.py",
        flags=dict(headless="--headless"),
        device_args=["agent.device={device}"],
        resume_args=["--resume", "--load_run", "{run_dir_regex}", "--checkpoint", "{checkpoint_regex}"],
        finetune_args=["--resume", "--load_run", "{run_dir_regex}", "--checkpoint", "{checkpoint_regex}"],
        env=_ISAAC_KIT_ENV,
    ),
    "isaaclab3": dict(
        description="Isaac Lab 3.x: python -m isaaclab train --rl_library rsl_rl",
        module="isaaclab",
        script_args=["train", "--rl_library", "rsl_rl"],
        device_args=["agent.device={device}"],
        multi_gpu_module="isaaclab_rl.entrypoints.multigpu",
        multi_gpu_script_args=["--rl_library", "rsl_rl"],
        multi_gpu_args=["--run_timestamp={stamp}"],
        newton_selector="physics=newton_mjwarp",
        # rsl_rl imports GitPython at module level, which aborts where no git binary exists
        env={**_ISAAC_KIT_ENV, "GIT_PYTHON_REFRESH": "quiet"},
    ),
    "sb3": dict(
        description="a Stable-Baselines3 script (workloads/third_party/sb3_ppo.py is one): SB3's stdout table, "
                    "CheckpointCallback files, TensorBoard through SB3's logger",
        script="workloads/third_party/sb3_ppo.py",
        flags=dict(task="--env", num_envs="--n_envs", max_iterations="--total_timesteps", experiment_name="",
                   distributed=""),
        multi_gpu="none",
        # PPO.load + learn(--total_timesteps more, reset_num_timesteps=False): the budget is what is left
        resume_args=["--resume", "{checkpoint}"],
        finetune_args=["--resume", "{checkpoint}"],
        checkpoint_pattern=r"rl_model_(\d+)_steps\.zip",
        checkpoint_dir="logs/sb3/{run_name}/checkpoints",
        save_proven_after=0,
        observe=dict(parser="none", unit="timestep", completion="exit0",
                     progress=r"^\|\s*total_timesteps\s*\|\s*(?P<done>\d+)",
                     fps=r"^\|\s*fps\s*\|\s*(?P<value>\S+)",
                     reward=r"^\|\s*ep_rew_mean\s*\|\s*(?P<value>\S+)",
                     episode_length=r"^\|\s*ep_len_mean\s*\|\s*(?P<value>\S+)",
                     run_dir=r"^Logging to (?P<path>.+)$"),
        metrics=dict(reward="rollout/ep_rew_mean", fps="time/fps", episode_length="rollout/ep_len_mean"),
    ),
    "rsl_rl": dict(
        description="a plain rsl_rl script (workloads/third_party/rsl_rl_example.py is one): OnPolicyRunner's "
                    "stdout block, model_<iteration>.pt and TensorBoard in its log dir, no Isaac Lab command line",
        script="workloads/third_party/rsl_rl_example.py",
        flags=dict(task="--env", max_iterations="--iterations", experiment_name="", distributed=""),
        multi_gpu="none",
        resume_args=["--load", "{checkpoint}"],  # runner.load(): learn() counts on from the checkpoint
        finetune_args=["--load", "{checkpoint}"],
        run_dir="logs/rsl_rl/{run_name}",  # rsl_rl names it only in its git-diff line, absent outside a repo
        observe=dict(completion=[]),  # rsl_rl prints no end marker: its final iteration is completion
    ),
    "skrl": dict(
        description="an skrl script (workloads/third_party/skrl_ppo.py is one): tqdm progress on stdout, skrl's "
                    "TensorBoard tags, checkpoints <run dir>/checkpoints/agent_<timestep>.pt",
        script="workloads/third_party/skrl_ppo.py",
        flags=dict(task="--env", max_iterations="--timesteps", experiment_name="", distributed=""),
        multi_gpu="none",
        resume_args=["--checkpoint", "{checkpoint}"],  # agent.load(path); the trainer counts from 0 again
        finetune_args=["--checkpoint", "{checkpoint}"],
        resume_budget="remaining",
        counts_from_zero=True,
        checkpoint_pattern=r"agent_(\d+)\.pt",
        checkpoint_dir="{run_dir}/checkpoints",
        observe=dict(parser="none", unit="timestep",
                     progress=r"\|\s*(?P<done>\d+)/(?P<total>\d+) \[",
                     fps=r"(?P<value>[\d.]+)it/s\]",
                     # the bar at N/N is printed once the last timestep (and its checkpoint) is done
                     completion=[r"\|\s*(\d+)/\1 \["]),
        run_dir="runs/skrl/{run_name}",  # skrl prints no directory: <experiment.directory>/<experiment_name>
        metrics=dict(reward="Reward / Total reward (mean)", fps="", episode_length="Episode / Total timesteps (mean)"),
    ),
    "generic": dict(
        description="any command-line trainer: judged by its exit code and output alone; progress, FPS, reward "
                    "and checkpoints are unknown (a retry starts over)",
        script="train.py",
        flags={name: "" for name in TrainerFlags.model_fields},
        multi_gpu="none",
        resume_args=[],
        finetune_args=[],
        observe=dict(parser="none", completion="exit0"),
    ),
}


class ProfileError(LightsOutError, ValueError):
    """A trainer profile that cannot be built; str() is one sentence naming the key and the fix."""


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def resolve_profile(name: str, user: dict[str, dict]) -> TrainerProfile:
    """The profile `name`: a user table (which may `extends` another profile) or a built-in."""
    seen: list[str] = []
    table: dict = {}
    current: str | None = name
    while current is not None:
        if current in seen:
            raise ProfileError(f"trainer profiles extend each other in a loop ({' -> '.join([*seen, current])}); "
                               f"remove one 'extends'.")
        seen.append(current)
        if current in user:
            layer = dict(user[current])
            parent = layer.pop("extends", None)
        elif current in BUILTIN_PROFILES:
            layer, parent = dict(BUILTIN_PROFILES[current]), None
        else:
            known = ", ".join(sorted({*BUILTIN_PROFILES, *user}))
            raise ProfileError(f"unknown trainer profile {current!r}; use one of {known} or define "
                               f"[tool.lights_out.trainers.{current}].")
        table = _merge(layer, table)
        current = parent
    try:
        profile = TrainerProfile.model_validate(table)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ProfileError(f"trainer profile {name!r} key '{loc}': {first['msg']}; fix "
                           f"[tool.lights_out.trainers.{name}].") from None
    if not (profile.module or profile.script):
        raise ProfileError(f"trainer profile {name!r} names neither 'module' nor 'script'; set one of them.")
    checked = [(t, TEMPLATE_NAMES) for templates in (profile.resume_args, profile.finetune_args,
                                                     profile.device_args, profile.multi_gpu_args) for t in templates]
    checked += [(profile.checkpoint_dir, CHECKPOINT_DIR_NAMES)]
    checked += [(profile.run_dir, {"run_name"})] if profile.run_dir else []
    checked += [(t, ATTEMPT_ENV_NAMES) for t in profile.attempt_env.values()]
    for t, known in checked:
        unknown = set(re.findall(r"{(\w*)}", t)) - known
        if unknown:
            raise ProfileError(f"trainer profile {name!r}: unknown placeholder {{{sorted(unknown)[0]}}} in "
                               f"{t!r}; use one of {', '.join(sorted(known))}.")
    return profile
