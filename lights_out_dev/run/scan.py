"""Incremental reading of one trainer log: progress, TensorBoard dir, failure signatures, tracebacks.

The supervisor feeds every new line exactly once (`LogScanner.feed`); nothing is re-read. Progress
comes from rsl_rl's per-iteration stdout block in both spellings:

    5.x:  Learning iteration 12/1500 / Steps per second: 48213 / Mean reward: 3.21 / Run name: x
    2.x/3.x:  Learning iteration 12/1500 / Computation: 48213 steps/s (collection: ..., learning ...)

`progress.iteration` counts finished iterations: rsl_rl prints the 0-based index of the iteration
it has just finished ("Learning iteration 1499/1500" is the last one), so iteration = index + 1 and
a run that reached its end has iteration == total.

What else a trainer prints is read by its profile's `observe` table (lights_out_dev.core.profiles.Observe):
regexes for progress, FPS, reward, episode length and the run directory (they win over the built-in
parser, which `parser = "none"` turns off), and the completion markers; `end_marker_text` is the text
that matched, so a verdict's reason names it. What the log does not print at all (skrl's reward) is read
from the profile's TensorBoard tags (`read_tensorboard`, called by the watch loop every few seconds).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from lights_out_dev.core.classify import Observations
from lights_out_dev.core.profiles import Observe, TrainerProfile
from lights_out_dev.core.signatures import (
    RANK_PREFIX,
    TRACEBACK_START,
    SignatureMatcher,
    compile_matcher,
    exception_name,
)
from lights_out_dev.core.state import Progress
from lights_out_dev.core.tb import ScalarFollower
from lights_out_dev.executors.base import ExitStatus

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
ITERATION = re.compile(r"Learning iteration (\d+)/(\d+)")
COMPUTATION = re.compile(r"Computation:\s*([\d.]+) steps/s")
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf)", re.IGNORECASE)
LOG_DIR_LINE = "Logging experiment in directory:"
RUN_DIR_NAME_LINE = "Exact experiment name requested from command line:"
# rsl_rl's logger (rank 0 only) names the exact run dir: "Storing git diff for 'repo' in: <run>/git/repo.diff".
GIT_DIFF_LINE = re.compile(r"Storing git diff for '[^']*' in: (?P<path>.+)/git/[^/]+\.diff$")
# Exceptions that only wrap a worker's real error; they do not replace an exception already seen.
WRAPPER_EXCEPTIONS = frozenset({"ChildFailedError"})
MAX_WARNINGS = 20
MAX_LINE = 500
# A traceback header whose exception line never comes (output cut off) stops hiding lines after this.
MAX_TRACEBACK = 1000


def _number(text: str) -> float | None:
    m = NUMBER.search(text)
    return float(m.group()) if m else None


class LogScanner:
    """State distilled from the lines fed so far. Cheap per line (see bench/read_logs_speed.py)."""

    def __init__(self, extra_patterns: dict[str, list[str]] | None = None, *, run_name: str | None = None,
                 matcher: SignatureMatcher | None = None, profile: TrainerProfile | None = None,
                 root: Path | None = None, default_total: int | None = None, progress_offset: int = 0):
        self._matcher = matcher or compile_matcher(extra_patterns)
        self._profile = profile
        observe = profile.observe if profile else Observe()
        self._builtin = observe.parser == "rsl_rl"
        self.exit0_completes = observe.completion == "exit0"
        self._markers = [] if self.exit0_completes else [re.compile(m) for m in observe.completion]
        self._regexes = [(name, re.compile(rx)) for name in ("progress", "fps", "reward", "episode_length", "run_dir",
                                                              "tracker_url") if (rx := getattr(observe, name))]
        self._root = root
        self._unit = observe.unit
        # The numbers the log does not print (no regex, no built-in parser) come from the profile's TensorBoard
        # tags while the run goes (skrl logs its reward only there): Progress field -> tag.
        tags = profile.metrics if profile else None
        self._tb_fields = {} if self._builtin or tags is None else {
            field: tag for name, field in (("reward", "mean_reward"), ("fps", "steps_per_s"),
                                           ("episode_length", "mean_episode_length"))
            if not getattr(observe, name) and (tag := getattr(tags, name))}
        self._tb: ScalarFollower | None = None
        self._tb_source: str | None = None
        # A trainer that prints only what it has done (SB3's total_timesteps) counts towards the run's target.
        self._default_total = default_total
        # A trainer that counts a resumed run from 0 (skrl) is offset by its checkpoint's step.
        self._offset = progress_offset
        self.progress = Progress()
        self.end_marker = False
        self.end_marker_text: str | None = None
        self.tracker_url: str | None = None  # the experiment tracker's run (W&B's "View run at <url>")
        self.first_iteration_seen = False
        self.hits: dict[str, str] = {}
        self.exception: str | None = None
        self.warnings: list[str] = []
        self._in_traceback = False
        self._traceback_lines = 0
        self._log_root: str | None = None
        self._run_dir_names: list[str] = []  # one per rank; each rank stamps its own clock
        self._run_dir: str | None = None  # from rsl_rl's git diff line: beats what train.py printed
        # Isaac Lab appends "_<run_name>" to the directory name it prints; rsl_rl 5.x prints the run
        # name in its block, and the supervisor knows the one it passed.
        self._run_name = run_name

    @property
    def tb_dir(self) -> str | None:
        """The run's log directory (TensorBoard events, checkpoints) as far as the log tells.

        Every rank of a multi-GPU run prints train.py's two lines, with stamps that may differ (seen on
        2x H200: 05-29-16 and 05-29-17); only rank 0 creates its directory. rsl_rl's git-diff line
        (rank 0) names it exactly and wins; otherwise the candidate that exists on disk, else the last."""
        if self._run_dir is not None:  # a relative one (rsl_rl's git-diff line) is under the trainer's cwd
            return self._run_dir if self._root is None else str(self._root / self._run_dir)
        if self._profile is not None and self._profile.run_dir and self._run_name and self._log_root is None:
            return str((self._root or Path.cwd()) / self._profile.run_dir.format(run_name=self._run_name))
        if not self._builtin or self._log_root is None:
            return None
        if not self._run_dir_names:
            return self._log_root
        paths = [os.path.join(self._log_root, self._with_run_name(n)) for n in self._run_dir_names]
        return next((p for p in reversed(paths) if os.path.isdir(p)), paths[-1])

    def _with_run_name(self, name: str) -> str:
        if self._run_name and not name.endswith(f"_{self._run_name}"):
            return f"{name}_{self._run_name}"
        return name

    @property
    def training_finished(self) -> bool:
        """Its completion marker was seen, or its progress reached its total: what is left is its exit."""
        p = self.progress
        return self.end_marker or bool(p.iteration and p.total and p.iteration >= p.total)

    def read_tensorboard(self) -> bool:
        """Take the numbers the log does not print from the run's TensorBoard tags (only what the events
        files gained since the last call is read); True when one changed."""
        if not self._tb_fields or self.tb_dir is None:
            return False
        if self._tb is None or self._tb_source != self.tb_dir:
            self._tb, self._tb_source = ScalarFollower(), self.tb_dir
        latest = self._tb.update(self.tb_dir)
        changed = False
        for field, tag in self._tb_fields.items():
            if tag in latest and getattr(self.progress, field) != latest[tag][2]:
                setattr(self.progress, field, latest[tag][2])
                changed = True
        return changed

    @property
    def own_iteration(self) -> int | None:
        """Progress as the trainer counts it in this attempt, the unit its checkpoint names use (skrl's restart
        at 0 on resume; `progress.iteration` counts on from the checkpoint)."""
        done = self.progress.iteration
        return None if done is None else done - self._offset

    @property
    def checkpoint_dir(self) -> str | None:
        """Where this attempt's checkpoints are, by the profile's `checkpoint_dir` template."""
        if self._profile is None:
            return self.tb_dir
        where = self._profile.checkpoint_dir_for(self._root or Path.cwd(), self.tb_dir, self._run_name)
        return None if where is None else str(where)

    def feed(self, line: str) -> None:
        if "\x1b" in line:
            line = ANSI.sub("", line)
        line = line.rstrip("\r\n")
        bare = RANK_PREFIX.sub("", line) if line.startswith("[") else line
        if self._in_traceback:
            self._traceback_lines += 1
            if bare[:1] in (" ", "\t") and self._traceback_lines < MAX_TRACEBACK:
                return  # a frame or its source line: code that may mention "OutOfMemoryError", not an error
            if bare and (name := exception_name(bare)):
                # Python's final traceback line: the first unindented "Name: message" after the header.
                self._in_traceback = False
                if not (self.exception and name in WRAPPER_EXCEPTIONS):
                    self.exception = bare[:MAX_LINE]
        classes = self._matcher.match(line)
        if classes:
            self._record_hits(classes, line)
        if bare.startswith(TRACEBACK_START):
            self._in_traceback = True
            self._traceback_lines = 0
            return
        s = bare.strip()
        if self._builtin:
            self._progress(s)
        if self._regexes:
            self._observed(s)
        if self._markers and not self.end_marker:
            for marker in self._markers:
                if m := marker.search(s):
                    self.end_marker, self.end_marker_text = True, m.group(0)[:MAX_LINE]
                    break

    def _observed(self, s: str) -> None:
        """The profile's regexes: each sets its number (or the run directory) when it matches."""
        p = self.progress
        for name, rx in self._regexes:
            m = rx.search(s)
            if not m:
                continue
            groups = m.groupdict()
            if name == "progress":
                done = groups.get("done") or (m.group(1) if m.groups() else None)
                total = groups.get("total")
                if done is not None:
                    p.iteration = int(float(done)) + self._offset
                    p.total = int(float(total)) + self._offset if total else (p.total or self._default_total)
                    # a bar drawn at 0 (skrl's tqdm before its first step) has trained nothing yet
                    self.first_iteration_seen = self.first_iteration_seen or float(done) > 0
            elif name == "tracker_url":
                self.tracker_url = groups.get("url") or (m.group(1) if m.groups() else m.group(0))
            elif name == "run_dir":
                path = (groups.get("path") or (m.group(1) if m.groups() else "")).strip()
                if path:
                    self._run_dir = path
            else:
                value = _number(groups.get("value") or (m.group(1) if m.groups() else m.group(0)))
                setattr(p, "steps_per_s" if name == "fps" else f"mean_{name}", value)

    def _record_hits(self, classes: list[str], line: str) -> None:
        text = line.strip()[:MAX_LINE]
        for cls in classes:
            if cls == "warning":
                if len(self.warnings) < MAX_WARNINGS and text not in self.warnings:
                    self.warnings.append(text)
            elif cls == "completed":
                self.end_marker = True
                self.end_marker_text = self.end_marker_text or text
            else:
                self.hits.setdefault(cls, text)

    def _progress(self, s: str) -> None:
        p = self.progress
        if s.startswith("Mean reward:"):
            p.mean_reward = _number(s[12:])
        elif s.startswith("Mean episode length:"):
            p.mean_episode_length = _number(s[20:])
        elif s.startswith("Steps per second:"):
            p.steps_per_s = _number(s[17:])
        elif s.startswith("Computation:"):
            m = COMPUTATION.match(s)
            if m:
                p.steps_per_s = float(m.group(1))
        elif "Learning iteration" in s:
            m = ITERATION.search(s)
            if m:
                p.iteration, p.total = int(m.group(1)) + 1, int(m.group(2))
                self.first_iteration_seen = True
        elif s.startswith("Run name:"):
            self._run_name = s[9:].strip() or self._run_name
        elif LOG_DIR_LINE in s:
            root = s.split(LOG_DIR_LINE, 1)[1].strip()
            if root != self._log_root:  # every rank prints the same root: keep all ranks' stamps
                self._log_root, self._run_dir_names = root, []
        elif RUN_DIR_NAME_LINE in s:
            name = s.split(RUN_DIR_NAME_LINE, 1)[1].strip()
            if name:
                self._run_dir_names.append(name)
        elif s.startswith("Storing git diff for"):
            m = GIT_DIFF_LINE.match(s)
            if m:
                self._run_dir = m["path"]

    def observations(self, exit: ExitStatus | None, stopped_by: str | None) -> Observations:
        return Observations(
            exit_code=exit.exit_code if exit else None,
            signal=exit.signal if exit else None,
            scheduler_state=exit.scheduler_state if exit else None,
            hits=dict(self.hits),
            exception=self.exception,
            end_marker=self.end_marker,
            end_marker_text=self.end_marker_text,
            exit0_completes=self.exit0_completes,
            markers=tuple(m.pattern for m in self._markers),
            unit=self._unit,
            progress_observed=self._builtin or any(name == "progress" for name, _ in self._regexes),
            iteration=self.progress.iteration,
            total=self.progress.total,
            stopped_by=stopped_by,
        )
