"""doit entry point: the task creators live in tasks/ (see README "Task graph")."""
from tasks._preflight import *  # noqa: F401,F403
from tasks.cartpole import *  # noqa: F401,F403
from tasks.gym_cartpole import *  # noqa: F401,F403
from tasks.isaac_cartpole import *  # noqa: F401,F403
from tasks.top_dog import *  # noqa: F401,F403

try:
    from tasks.sweeps import *  # noqa: F401,F403
except ModuleNotFoundError as e:  # the sweeps module may not exist yet; any other import error is real
    if e.name != "tasks.sweeps":
        raise
