"""doit entry point: lights-out's own tasks (pre-flight checks, sweeps) and the project's families in tasks/."""
from lights_out_dev.doit.preflight_tasks import *  # noqa: F401,F403
from lights_out_dev.doit.sweep_tasks import *  # noqa: F401,F403
from tasks.cartpole import *  # noqa: F401,F403
from tasks.gym_cartpole import *  # noqa: F401,F403
from tasks.isaac_cartpole import *  # noqa: F401,F403
from tasks.top_dog import *  # noqa: F401,F403
