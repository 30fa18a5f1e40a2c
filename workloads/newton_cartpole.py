"""Cart-pole on the Newton physics engine (Warp), with the same observation/action/reward contract as
envs.CartpoleEnv. The asset is the cart-pole URDF that ships inside the newton package, reduced to a
single pole; Featherstone is the solver because it runs on CPU as well as on CUDA.

Warp caches compiled kernels (WARP_CACHE_PATH or ~/.cache/warp), so only the very first run compiles.
"""

from __future__ import annotations

import re

import torch

from envs import CartpoleEnv


def single_pole_urdf() -> str:
    import newton.examples

    with open(newton.examples.get_asset("cartpole.urdf"), encoding="utf-8") as f:
        src = f.read()
    # The shipped asset is a double pendulum; drop the second pole to get the classic task.
    src = re.sub(r'<link name="pole2">.*?</link>', "", src, flags=re.S)
    return re.sub(r'<joint name="pole1_to_pole2".*?</joint>', "", src, flags=re.S)


class NewtonCartpoleEnv(CartpoleEnv):
    """Joint coordinates are [cart slide, pole hinge]; the torch state is a copy re-read after every step."""

    def __init__(self, cfg: dict, num_envs: int, device: str, seed: int) -> None:
        import warp as wp

        wp.config.quiet = True
        import newton

        self.wp, self.newton = wp, newton
        robot = newton.ModelBuilder()
        robot.add_urdf(single_pole_urdf(), floating=False, enable_self_collisions=False)
        scene = newton.ModelBuilder()
        scene.replicate(robot, num_envs)
        self.model = scene.finalize(device=str(device))
        self.solver = newton.solvers.SolverFeatherstone(self.model)
        self.s0, self.s1 = self.model.state(), self.model.state()
        self.control = self.model.control()
        super().__init__(cfg, num_envs, device, seed)

    def views(self):
        wp, n = self.wp, self.num_envs
        return (
            wp.to_torch(self.s0.joint_q).view(n, 2),
            wp.to_torch(self.s0.joint_qd).view(n, 2),
            wp.to_torch(self.control.joint_f).view(n, 2),
        )

    def write_state(self) -> None:
        q, qd, _ = self.views()
        q.copy_(torch.stack((self.state[:, 2], self.state[:, 0]), dim=1))
        qd.copy_(torch.stack((self.state[:, 3], self.state[:, 1]), dim=1))
        self.newton.eval_fk(self.model, self.s0.joint_q, self.s0.joint_qd, self.s0)

    def reset_all(self) -> None:
        super().reset_all()
        self.write_state()

    def integrate(self, actions: torch.Tensor) -> None:
        c = self.cfg
        _, _, f = self.views()
        f[:, 0] = c["force_scale"] * actions[:, 0]
        substeps = c["newton_substeps"]
        for _ in range(substeps):
            self.s0.clear_forces()
            self.solver.step(self.s0, self.s1, self.control, None, c["dt"] / substeps)
            self.s0, self.s1 = self.s1, self.s0
        q, qd, _ = self.views()
        self.state = torch.stack((q[:, 1], qd[:, 1], q[:, 0], qd[:, 0]), dim=1)

    def step(self, actions: torch.Tensor):
        out = super().step(actions)
        self.write_state()  # auto-reset changed some envs' torch state; push it into the simulator
        return out
