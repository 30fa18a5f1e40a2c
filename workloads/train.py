"""Reference trainer: rsl_rl PPO on GPU-batched torch (or Newton) environments, with Isaac Lab 2.x's
train.py command line, stdout markers and log layout. Same file on cpu and cuda:N, single or multi GPU.

    python workloads/train.py --task Lo-Cartpole-v0 --num_envs 64 --max_iterations 3 --headless --device cpu
    python -m torch.distributed.run --nproc_per_node=2 workloads/train.py --distributed --headless
"""

from __future__ import annotations

import os
import sys

# Line-buffered output: the supervisor reads the log live.
sys.stdout.reconfigure(line_buffering=True)
sys.stderr.reconfigure(line_buffering=True)

import datetime as _dt  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402

import cli  # noqa: E402
import inject  # noqa: E402
from checkpoints import get_checkpoint_path, log_root, run_stamp  # noqa: E402

PROG = "train.py"


def build_parser():
    p = cli.common_parser(PROG, "Train a PPO policy (rsl_rl) on a lights-out reference task.")
    p.add_argument("--max_iterations", type=cli.positive_int, default=None)
    p.add_argument("--distributed", action="store_true", help="multi-GPU/multi-process via torch.distributed.run")
    p.add_argument("--resume", action="store_true", help="continue from --load_run/--checkpoint")
    p.add_argument("--run_name", default=None)
    p.add_argument("--logger", default="tensorboard", choices=["tensorboard"])
    p.add_argument("--log_project_name", default=None, help="accepted for Isaac Lab compatibility")
    p.add_argument("--inject", action="append", default=[], metavar="KIND@ITER[:always]",
                   help="fault injection for tests: " + ", ".join(inject.KINDS))
    return p


class Trainer:
    """Owns the runner, the iteration hooks (injections) and graceful SIGINT/SIGTERM handling."""

    def __init__(self, injections):
        self.injections = injections
        self.fired: set = set()
        self.runner = None
        self.learning = False
        self.steps = 0
        self.start_it = 0
        self.stop_signal: int | None = None
        self.rank, self.world_size = int(os.getenv("RANK", "0")), int(os.getenv("WORLD_SIZE", "1"))

    # --- signals -------------------------------------------------------------------------------
    def on_signal(self, signum, _frame):
        self.stop_signal = signum
        if not self.learning:  # nothing worth saving yet, or training already over
            self.exit_on_signal()

    def check_stop(self):
        if self.stop_signal is not None:
            self.exit_on_signal()

    def exit_on_signal(self):
        signum = self.stop_signal
        name = signal.Signals(signum).name
        code = 128 + signum
        runner = self.runner
        if self.learning and runner is not None and runner.logger.writer is not None:
            it = self.current_iteration()
            runner.current_learning_iteration = it  # resume restarts this iteration
            path = os.path.join(runner.logger.log_dir, f"model_{it}.pt")
            runner.save(path)
            runner.logger.writer.flush()
            print(f"[INFO] Received {name} at iteration {it}: saved checkpoint {path}; exiting with code {code}.")
        else:
            print(f"[INFO] Received {name}: exiting with code {code}.")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    # --- iteration hooks -----------------------------------------------------------------------
    def current_iteration(self) -> int:
        steps_per_it = self.runner.cfg["num_steps_per_env"]
        return self.start_it + max(self.steps - 1, 0) // steps_per_it

    def hook_env(self, env):
        step = env.step
        steps_per_it = self.runner.cfg["num_steps_per_env"]

        def hooked_step(actions):
            self.check_stop()
            if self.steps % steps_per_it == 0:
                self.on_iteration_start(self.start_it + self.steps // steps_per_it)
            self.steps += 1
            return step(actions)

        env.step = hooked_step

    def on_iteration_start(self, it: int):
        for inj in self.injections:
            if inj.kind == "slow" and it >= inj.iteration:
                deadline = time.monotonic() + inj.seconds
                while time.monotonic() < deadline:
                    time.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
                    self.check_stop()
            elif inj.iteration == it and inj not in self.fired and inj.kind not in ("slow", "hang_exit"):
                self.fired.add(inj)
                self.fire(inj, it)

    def fire(self, inj, it: int):
        kind = inj.kind
        if kind == "crash":
            inject.crash(it)
        elif kind == "segfault":
            inject.segfault(it)
        elif kind == "oom":
            inject.oom(it, str(self.runner.device))
        elif kind == "stall":
            inject.say(f"stall at iteration {it}: no more output or progress")
            inject.sleep_forever(self.check_stop)
        elif kind == "config_error":
            inject.config_error(it, self.runner.cfg)
        elif kind == "exit0_early":
            inject.exit0_early(it)
        elif kind in inject.LEARNING_FAULTS:
            inject.learning_fault(kind, it, self.runner.alg)
        elif kind == "progress_cr":
            inject.progress_cr(it, inj.seconds)
        elif kind == "detached_child":
            self.detached = inject.detached_child(it)  # kept referenced: never reaped by this process
            inject.sleep_forever(self.check_stop)
        elif kind == "print_secret":
            inject.print_secret(it)
        elif kind == "nccl" and self.rank == self.world_size - 1:
            inject.say(f"nccl at iteration {it}: rank {self.rank} leaves the collective")
            inject.sleep_forever(self.check_stop)

    def hang_after_training(self):
        if any(i.kind == "hang_exit" for i in self.injections):
            inject.say("hang_exit: training finished, the process does not exit")
            inject.sleep_forever(self.check_stop)


def close_writer(runner) -> None:
    """rsl_rl never closes its TensorBoard SummaryWriter; without this the last iteration's scalars can be lost."""
    writer = runner.logger.writer
    if writer is not None and hasattr(writer, "close"):
        writer.close()


def make_runner_class():
    import torch
    from rsl_rl.runners import OnPolicyRunner

    class Runner(OnPolicyRunner):
        """rsl_rl's runner with a process group that also works on CPU (gloo) and a configurable timeout."""

        pg_timeout_s: float | None = None

        def _configure_multi_gpu(self) -> None:
            self.gpu_world_size = int(os.getenv("WORLD_SIZE", "1"))
            self.is_distributed = self.gpu_world_size > 1
            if not self.is_distributed:
                self.gpu_local_rank = self.gpu_global_rank = 0
                self.cfg["multi_gpu"] = None
                return
            self.gpu_local_rank = int(os.getenv("LOCAL_RANK", "0"))
            self.gpu_global_rank = int(os.getenv("RANK", "0"))
            self.cfg["multi_gpu"] = {
                "global_rank": self.gpu_global_rank,
                "local_rank": self.gpu_local_rank,
                "world_size": self.gpu_world_size,
            }
            kwargs = {}
            if self.pg_timeout_s is not None:
                kwargs["timeout"] = _dt.timedelta(seconds=self.pg_timeout_s)
            if str(self.device).startswith("cuda"):
                if self.device != f"cuda:{self.gpu_local_rank}":
                    raise ValueError(f"Device '{self.device}' does not match local rank '{self.gpu_local_rank}'.")
                torch.cuda.set_device(self.gpu_local_rank)
                backend = "nccl"
            else:
                backend = "gloo"
            torch.distributed.init_process_group(
                backend=backend, rank=self.gpu_global_rank, world_size=self.gpu_world_size, **kwargs
            )

    return Runner


def dump_yaml(path: str, data: dict) -> None:
    import yaml

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f, sort_keys=False)


def main(argv: list[str]) -> int:
    try:
        args = cli.parse(build_parser(), argv)
        injections = [inject.parse_injection(t) for t in args.inject]
        world_size = int(os.getenv("WORLD_SIZE", "1"))
        local_rank = int(os.getenv("LOCAL_RANK", "0"))
        if any(i.kind == "nccl" for i in injections) and not (args.distributed and world_size > 1):
            raise cli.UsageError(
                "--inject nccl needs a multi-process run; launch with python -m torch.distributed.run "
                "--nproc_per_node=2 workloads/train.py --distributed ..."
            )
        device = cli.resolve_device(args.device)
        if args.distributed and world_size > 1 and device.startswith("cuda"):
            device = cli.resolve_device(f"cuda:{local_rank}")  # Isaac Lab: each rank takes its local GPU
    except (cli.UsageError, ValueError) as e:
        cli.fail(PROG, cli.UsageError(str(e)))
    injections = inject.active(injections, inject.current_attempt())

    import tasks


    env_cfg, agent_cfg = tasks.task_config(args.task)
    try:
        cli.apply_hydra(env_cfg, agent_cfg, args.hydra)
    except cli.UsageError as e:
        cli.fail(PROG, e)
    if args.num_envs is not None:
        env_cfg["num_envs"] = args.num_envs
    if args.seed is not None:
        agent_cfg["seed"] = args.seed
    if args.max_iterations is not None:
        agent_cfg["max_iterations"] = args.max_iterations
    if args.experiment_name:
        agent_cfg["experiment_name"] = args.experiment_name
    if args.run_name:
        agent_cfg["run_name"] = args.run_name
    agent_cfg["resume"] = args.resume
    if args.load_run is not None:
        agent_cfg["load_run"] = args.load_run
    if args.checkpoint is not None:
        agent_cfg["load_checkpoint"] = args.checkpoint
    agent_cfg["device"] = device
    env_cfg["physics"] = args.physics
    env_cfg["seed"] = agent_cfg["seed"]
    if args.distributed:
        agent_cfg["seed"] += local_rank  # Isaac Lab: different exploration per rank
        env_cfg["seed"] = agent_cfg["seed"]

    root = log_root(agent_cfg["experiment_name"])
    print(f"[INFO] Logging experiment in directory: {root}")
    stamp = run_stamp()
    print(f"Exact experiment name requested from command line: {stamp}")
    log_dir = os.path.join(root, stamp + (f"_{agent_cfg['run_name']}" if agent_cfg["run_name"] else ""))

    # Which checkpoint to start from: resolved before this run's directory exists.
    load_path, fine_tune = None, False
    try:
        if args.resume:
            if args.checkpoint and os.path.isfile(args.checkpoint):
                load_path = args.checkpoint
            else:
                load_path = get_checkpoint_path(root, agent_cfg["load_run"], agent_cfg["load_checkpoint"])
        elif args.checkpoint:
            if not os.path.isfile(args.checkpoint):
                raise FileNotFoundError(
                    f"checkpoint file {args.checkpoint!r} does not exist; pass an existing model_<iter>.pt "
                    "or add --resume to search logs/rsl_rl/<experiment>/ with --load_run"
                )
            load_path, fine_tune = args.checkpoint, True
    except FileNotFoundError as e:
        cli.fail(PROG, cli.UsageError(str(e)))

    trainer = Trainer(injections)
    signal.signal(signal.SIGTERM, trainer.on_signal)
    signal.signal(signal.SIGINT, trainer.on_signal)

    import torch

    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Tiny networks gain nothing from intra-op threads, and spinning OpenMP threads make several
        # trainers sharing a small CPU machine (CI, smoke runs) up to 50x slower.
        torch.set_num_threads(1)

    torch.manual_seed(agent_cfg["seed"])
    env = tasks.make_env(env_cfg, env_cfg["num_envs"], device, env_cfg["seed"], args.physics)

    Runner = make_runner_class()
    if any(i.kind == "nccl" for i in injections):
        Runner.pg_timeout_s = float(os.environ.get("LIGHTS_OUT_NCCL_TIMEOUT_S", "20"))
    runner = Runner(env, agent_cfg, log_dir=log_dir, device=device)
    trainer.runner = runner
    runner.add_git_repo_to_log(__file__)

    if load_path:
        try:
            if fine_tune:
                print(f"[INFO]: Loading model weights for fine-tuning from: {os.path.abspath(load_path)} "
                      "(iteration counter starts at 0)")
                runner.load(load_path, load_cfg={"actor": True, "critic": True}, map_location=device)
            else:
                print(f"[INFO]: Loading model checkpoint from: {os.path.abspath(load_path)}")
                runner.load(load_path, map_location=device)
        except Exception as e:  # a file that is not a checkpoint of this task
            cli.fail(PROG, cli.UsageError(
                f"cannot load checkpoint {load_path!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                f"pass a model_<iter>.pt trained on {args.task}"
            ))

    if runner.logger.disable_logs is False:
        dump_yaml(os.path.join(log_dir, "params", "env.yaml"), env_cfg)
        dump_yaml(os.path.join(log_dir, "params", "agent.yaml"), agent_cfg)

    trainer.start_it = runner.current_learning_iteration
    trainer.hook_env(env)
    start_time = time.time()
    trainer.learning = True
    try:
        runner.learn(num_learning_iterations=agent_cfg["max_iterations"], init_at_random_ep_len=True)
    except Exception as e:
        if runner.is_distributed and isinstance(e, (torch.distributed.DistError, RuntimeError)) and not isinstance(
            e, torch.OutOfMemoryError
        ):
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"[ERROR] rank {trainer.rank}: collective operation failed: {type(e).__name__}: {first}", flush=True)
        raise
    trainer.learning = False
    close_writer(runner)
    print(f"Training time: {round(time.time() - start_time, 2)} seconds")
    trainer.check_stop()
    trainer.hang_after_training()
    if runner.is_distributed:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
