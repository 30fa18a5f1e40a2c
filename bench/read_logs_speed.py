"""How fast the readers are: TensorBoard scalars (tb.py, read_logs tb-latest) and the log scanner.

    python bench/read_logs_speed.py [--scalars 100000] [--lines 200000]

Targets: `tb-latest` on a 100k-scalar events file well under 1 s; LogScanner.feed >= 100k lines/s
(the supervisor feeds it every line of every trainer log).

Recorded (2-core CI-class VM, Python 3.11, protobuf upb, 2026-11-22):
    latest_scalars 100k scalars: 0.12 s | read_scalars all points: 0.14 s | tb-latest: 0.17 s
    LogScanner.feed on rsl_rl 5.x blocks: 385k lines/s (165k lines/s with other jobs on both cores)
Profiles' regexes (2026-12-02, both cores busy with other jobs, so only the ratios mean much): rsl_rl
blocks through the default profile 124-212k lines/s, within the noise of before profiles (124-188k);
SB3's stdout table through the `sb3` profile (six regexes per line) 142-265k lines/s.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lights_out_dev.core import tb  # noqa: E402
from lights_out_dev.core.profiles import resolve_profile  # noqa: E402
from lights_out_dev.views.read_logs import summarize_run  # noqa: E402
from lights_out_dev.run.scan import LogScanner  # noqa: E402

TAGS = ("Train/mean_reward", "Train/mean_episode_length", "Perf/total_fps", "Perf/collection_time",
        "Perf/learning_time", "Loss/value", "Loss/surrogate", "Loss/entropy", "Loss/learning_rate", "Policy/mean_std")

BLOCK = """################################################################################
\x1b[1m                            Learning iteration {it}/100000                           \x1b[0m 

                            Total steps: 12345 
                       Steps per second: 48213 
                        Collection time: 0.123s 
                          Learning time: 0.045s 
                        Mean value loss: 0.0123
                    Mean surrogate loss: -0.0045
                      Mean entropy loss: 1.4054
                            Mean reward: 3.21
                    Mean episode length: 45.60
                        Mean action std: 0.98
--------------------------------------------------------------------------------
                         Iteration time: 0.17s
                           Time elapsed: 0:00:02
                                    ETA: 0:04:12
"""

# Stable-Baselines3's stdout table (verbose=1), read by the `sb3` profile's regexes
SB3_TABLE = """-----------------------------------------
| rollout/                |             |
|    ep_len_mean          | 23.8        |
|    ep_rew_mean          | 23.8        |
| time/                   |             |
|    fps                  | 136         |
|    iterations           | 4           |
|    total_timesteps      | 2048        |
| train/                  |             |
|    approx_kl            | 0.0006      |
|    loss                 | 44.1        |
-----------------------------------------
"""


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--scalars", type=int, default=100_000)
    p.add_argument("--lines", type=int, default=200_000)
    args = p.parse_args()
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory() as tmp:
        w = SummaryWriter(tmp)
        for step in range(args.scalars // len(TAGS)):
            for i, tag in enumerate(TAGS):
                w.add_scalar(tag, step + i, step)
        w.close()
        size = sum(f.stat().st_size for f in tb.event_files(tmp))
        n = sum(len(v) for v in tb.read_scalars(tmp).values())
        print(f"events file: {n} scalars, {size / 1e6:.1f} MB")
        print(f"latest_scalars:               {best_of(lambda: tb.latest_scalars(tmp)):.3f} s")
        print(f"read_scalars (all points):    {best_of(lambda: tb.read_scalars(tmp)):.3f} s")
        print(f"tb-latest (summarize_run):    {best_of(lambda: summarize_run(Path(tmp))):.3f} s")

    lines = []
    it = 0
    while len(lines) < args.lines:
        lines.extend(BLOCK.format(it=it).splitlines(keepends=True))
        it += 1

    def feed_all():
        s = LogScanner()
        for line in lines:
            s.feed(line)

    dt = best_of(feed_all)
    print(f"LogScanner.feed:              {len(lines) / dt:,.0f} lines/s ({len(lines)} lines in {dt:.3f} s)")

    table = (SB3_TABLE * (args.lines // SB3_TABLE.count("\n") + 1)).splitlines(keepends=True)[:args.lines]
    sb3 = resolve_profile("sb3", {})

    def feed_sb3():
        s = LogScanner(profile=sb3)
        for line in table:
            s.feed(line)

    dt = best_of(feed_sb3)
    print(f"LogScanner.feed, sb3 profile: {len(table) / dt:,.0f} lines/s ({len(table)} lines in {dt:.3f} s)")


if __name__ == "__main__":
    main()
