#!/usr/bin/env bash
# Builds .venv-isaaclab3/: real Isaac Lab 3.0 (kit-less, Newton physics, rsl_rl) beside the project's own
# venv, with the offline assets Isaac-Cartpole needs. The isaac_cartpole family and the tests marked
# `isaaclab` run it. Isaac Lab 3.0 needs Python 3.12 and torch 2.11.0: the script finds a Python 3.12
# (python3.12 on PATH, or pyenv's), and without one it says so and exits 0 (those tests then skip,
# except under CI=true, where they fail).
#
#   tools/isaaclab3_env.sh            # build or reuse; a finished venv is reused while its inputs match
#   LIGHTS_OUT_ISAACLAB3_VENV=DIR     # build it elsewhere (default: <project>/.venv-isaaclab3)
#
# torch 2.11.0 from the package index is a CUDA build (about 4.8 GB installed); it also runs on the CPU.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${LIGHTS_OUT_ISAACLAB3_VENV:-$root/.venv-isaaclab3}
reqs=$root/tools/isaaclab3-requirements.txt
runtime=$root/tools/isaaclab3-runtime.txt
stamp=$venv/.lights-out-complete
want=$(cat "$0" "$reqs" "$runtime" | sha256sum | cut -c1-16)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/python" -c "import isaaclab" 2>/dev/null; then
    echo "isaaclab3: $venv is ready"
    exit 0
fi

python312=""
for candidate in "$(command -v python3.12 || true)" "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.12*/bin/python3.12; do
    # pyenv's shim is on PATH even when no 3.12 is selected: ask the interpreter itself
    if [ -n "$candidate" ] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
        python312=$candidate; break
    fi
done
if [ -z "$python312" ]; then
    echo "isaaclab3: no Python 3.12 on this machine (python3.12 or pyenv's); real Isaac Lab tests will skip. Install Python 3.12 and rerun tools/isaaclab3_env.sh."
    exit 0
fi

echo "isaaclab3: building $venv with $python312 (torch 2.11.0 + Isaac Lab 3.0.0; several GB on first build)"
rm -rf "$venv"
"$python312" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
"${pip[@]}" torch==2.11.0
"${pip[@]}" -r "$runtime"
"${pip[@]}" --no-deps -r "$reqs"

# Offline assets: Isaac Lab loads USD files from {ISAACSIM_ASSET_ROOT}/Isaac/IsaacLab/...; the newton
# package ships Isaac Lab's cart-pole (flattened; its defaultPrim must name the prim 'cartpole').
site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
assets=$venv/assets/Isaac/IsaacLab
mkdir -p "$assets/Robots/Classic/Cartpole" "$assets/Environments/Grid/default_ground_plane_checker_v1"
sed 's/defaultPrim = "cartPole"/defaultPrim = "cartpole"/' \
    "$site/newton/examples/assets/cartpole_single_pendulum.usda" > "$assets/Robots/Classic/Cartpole/cartpole.usd"
cat > "$assets/Environments/Grid/default_ground_plane_checker_v1/default_ground_plane.usda" <<'USD'
#usda 1.0
(
    defaultPrim = "GroundPlane"
    metersPerUnit = 1
    kilogramsPerUnit = 1
    upAxis = "Z"
)

def Xform "GroundPlane"
{
    def Plane "CollisionPlane" (
        prepend apiSchemas = ["PhysicsCollisionAPI"]
    )
    {
        uniform token axis = "Z"
        double length = 100
        double width = 100
        uniform token purpose = "guide"
    }
}
USD
"$venv/bin/python" -c "import isaaclab, isaaclab_rl, isaaclab_tasks, rsl_rl, newton" 2>/dev/null || {
    echo "isaaclab3: $venv was built but does not import Isaac Lab; see the pip output above." >&2; exit 1; }
echo "$want" > "$stamp"
echo "isaaclab3: $venv is ready"
