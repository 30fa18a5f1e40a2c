"""GPU-batched torch environments that satisfy rsl_rl's VecEnv contract.

Every step is pure tensor algebra over all environments: no Python loop over envs and no host sync
(resets use torch.where, not boolean indexing), so the same code runs at 64 envs on a CPU and at
hundreds of thousands on a GPU.
"""

from __future__ import annotations

import math

import torch
from rsl_rl.env import VecEnv
from tensordict import TensorDict


class BatchedEnv(VecEnv):
    """Shared bookkeeping: episode counters, time-outs, auto-reset, the TensorDict observation."""

    num_obs: int

    def __init__(self, cfg: dict, num_envs: int, device: str, seed: int) -> None:
        self.cfg = dict(cfg)
        self.num_envs = num_envs
        self.device = device
        self.num_actions = cfg["num_actions"]
        self.max_episode_length = int(cfg["episode_length_steps"])
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.episode_length_buf = torch.zeros(num_envs, dtype=torch.long, device=device)
        self.state = torch.zeros(num_envs, self.state_dim, device=device)
        self.last_success: torch.Tensor | None = None  # success flags of the last step (play.py reads them)
        self.reset_all()

    # --- to be provided by a task -------------------------------------------------------------
    state_dim: int

    def sample_state(self, n: int) -> torch.Tensor:  # initial states for n envs
        raise NotImplementedError

    def integrate(self, actions: torch.Tensor) -> None:  # advance self.state one control step
        raise NotImplementedError

    def observe(self) -> torch.Tensor:
        raise NotImplementedError

    def reward_and_termination(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def success(self) -> torch.Tensor | None:  # per-env success flag at episode end, None if undefined
        return None

    # --- VecEnv --------------------------------------------------------------------------------
    def reset_all(self) -> None:
        self.state = self.sample_state(self.num_envs)
        self.episode_length_buf.zero_()

    def get_observations(self) -> TensorDict:
        return TensorDict({"policy": self.observe()}, batch_size=[self.num_envs])

    def step(self, actions: torch.Tensor) -> tuple[TensorDict, torch.Tensor, torch.Tensor, dict]:
        actions = actions.clamp(-1.0, 1.0)
        self.integrate(actions)
        self.episode_length_buf += 1
        reward, terminated = self.reward_and_termination(actions)
        time_out = self.episode_length_buf >= self.max_episode_length
        done = terminated | time_out
        self.last_success = self.success()
        # Auto-reset finished envs without indexing (indexing with a mask would sync with the host).
        fresh = self.sample_state(self.num_envs)
        self.state = torch.where(done.unsqueeze(1), fresh, self.state)
        self.episode_length_buf = torch.where(done, torch.zeros_like(self.episode_length_buf), self.episode_length_buf)
        extras = {"time_outs": time_out}
        return self.get_observations(), reward, done.to(torch.long), extras

    def uniform(self, n: int, low, high) -> torch.Tensor:
        low = torch.as_tensor(low, dtype=torch.float, device=self.device)
        high = torch.as_tensor(high, dtype=torch.float, device=self.device)
        shape = (n,) + tuple(low.shape)
        return low + (high - low) * torch.rand(shape, generator=self.generator, device=self.device)


class CartpoleEnv(BatchedEnv):
    """Classic cart-pole (Barto, Sutton & Anderson 1983; the gym equations) with a continuous force.

    State and observation: [pole angle, pole angular velocity, cart position, cart velocity], like
    Isaac Lab's Isaac-Cartpole-Direct-v0. Reward: +1 per step alive, -2 on failure, small penalties
    on angle and velocities. The longest episode is cfg["episode_length_steps"].
    """

    state_dim = 4

    def sample_state(self, n: int) -> torch.Tensor:
        r = self.cfg["reset_range"]
        return self.uniform(n, [-r[0], -r[1], -r[2], -r[3]], list(r))

    def integrate(self, actions: torch.Tensor) -> None:
        c = self.cfg
        theta, theta_dot, x, x_dot = self.state.unbind(1)
        force = c["force_scale"] * actions[:, 0]
        total_mass = c["cart_mass"] + c["pole_mass"]
        pml = c["pole_mass"] * c["pole_half_length"]
        cos, sin = torch.cos(theta), torch.sin(theta)
        temp = (force + pml * theta_dot**2 * sin) / total_mass
        theta_acc = (c["gravity"] * sin - cos * temp) / (
            c["pole_half_length"] * (4.0 / 3.0 - c["pole_mass"] * cos**2 / total_mass)
        )
        x_acc = temp - pml * theta_acc * cos / total_mass
        dt = c["dt"]
        x_dot = x_dot + dt * x_acc
        theta_dot = theta_dot + dt * theta_acc
        self.state = torch.stack((theta + dt * theta_dot, theta_dot, x + dt * x_dot, x_dot), dim=1)

    def observe(self) -> torch.Tensor:
        return self.state

    def reward_and_termination(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        theta, theta_dot, x, x_dot = self.state.unbind(1)
        c = self.cfg
        terminated = (theta.abs() > c["max_pole_angle"]) | (x.abs() > c["max_cart_position"])
        reward = (
            1.0
            - 2.0 * terminated.float()
            - 1.0 * theta**2
            - 0.01 * x_dot.abs()
            - 0.005 * theta_dot.abs()
        )
        return reward, terminated


class ReacherEnv(BatchedEnv):
    """Planar 2-link arm (unit-inertia links, viscous joints) that must bring its fingertip to a random target.

    Observation: cos/sin of both joints, joint velocities, target xy, fingertip-to-target vector (10).
    Actions: two joint torques. Reward: -distance, an effort penalty, a bonus while within
    cfg["success_radius"]. Success: the fingertip ends the episode within that radius.
    """

    state_dim = 6  # q1, q2, qd1, qd2, target x, target y

    def sample_state(self, n: int) -> torch.Tensor:
        c = self.cfg
        q = self.uniform(n, [-math.pi, -math.pi], [math.pi, math.pi])
        qd = torch.zeros(n, 2, device=self.device)
        reach = c["link_lengths"][0] + c["link_lengths"][1]
        radius = reach * torch.sqrt(self.uniform(n, [0.04], [0.81]))  # uniform over the annulus 0.2..0.9 reach
        angle = self.uniform(n, [-math.pi], [math.pi])
        target = torch.cat((radius * torch.cos(angle), radius * torch.sin(angle)), dim=1)
        return torch.cat((q, qd, target), dim=1)

    def fingertip(self) -> torch.Tensor:
        l1, l2 = self.cfg["link_lengths"]
        q1, q2 = self.state[:, 0], self.state[:, 1]
        return torch.stack(
            (l1 * torch.cos(q1) + l2 * torch.cos(q1 + q2), l1 * torch.sin(q1) + l2 * torch.sin(q1 + q2)), dim=1
        )

    def integrate(self, actions: torch.Tensor) -> None:
        c = self.cfg
        q, qd, target = self.state[:, 0:2], self.state[:, 2:4], self.state[:, 4:6]
        qdd = c["torque_scale"] * actions - c["damping"] * qd
        qd = (qd + c["dt"] * qdd).clamp(-c["max_joint_velocity"], c["max_joint_velocity"])
        q = torch.remainder(q + c["dt"] * qd + math.pi, 2 * math.pi) - math.pi
        self.state = torch.cat((q, qd, target), dim=1)

    def observe(self) -> torch.Tensor:
        q, qd, target = self.state[:, 0:2], self.state[:, 2:4], self.state[:, 4:6]
        return torch.cat((torch.cos(q), torch.sin(q), 0.1 * qd, target, target - self.fingertip()), dim=1)

    def distance(self) -> torch.Tensor:
        return torch.linalg.vector_norm(self.state[:, 4:6] - self.fingertip(), dim=1)

    def reward_and_termination(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.distance()
        near = (d < self.cfg["success_radius"]).float()
        reward = -d - 0.01 * (actions**2).sum(dim=1) + 0.5 * near
        return reward, torch.zeros_like(d, dtype=torch.bool)

    def success(self) -> torch.Tensor:
        return self.distance() < self.cfg["success_radius"]
