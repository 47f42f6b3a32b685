# Sourced by the scripts: where cargo builds, kept outside the clone so repeated runs (and CI)
# reuse it. One per user: root's (CI's) cache is not writable by a normal user on the same
# machine. $CARGO_TARGET_DIR, when set, wins.
if [ "$(id -u)" = 0 ]; then default_target=/var/tmp/fjord-target; else default_target="/var/tmp/fjord-target-$(id -un)"; fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$default_target}"
unset default_target
