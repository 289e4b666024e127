#!/bin/sh
# Runs a command as a container would: in the mount and PID namespaces that `unshare --mount
# --pid --fork` made for this script, over a root of its own. The root holds the distribution's
# /usr (for its python3) read-only, an environment with the server's packages at /srv/env, the
# app at /srv/app, an empty /tmp and its own /proc; nothing of apiscope, and not the paths the
# host sees these files at.
#   sandbox.sh ROOT ENV APP -- CMD...   (CMD runs in ROOT, as PID 1 of the new namespace)
set -eu
root=$1 env=$2 app=$3
shift 4
mount --make-rprivate /
mount -t tmpfs -o mode=0755 sandbox "$root"
mkdir -p "$root/usr" "$root/srv/env" "$root/srv/app" "$root/tmp" "$root/proc" "$root/dev" \
         "$root/etc"
mount --rbind -o ro /usr "$root/usr"
for link in bin lib lib64 sbin; do
  if [ -L "/$link" ]; then ln -s "$(readlink "/$link")" "$root/$link"; fi
done
mount --bind -o ro "$env" "$root/srv/env"
mount --bind -o ro "$app" "$root/srv/app"
mount --rbind /dev "$root/dev"
mount -t tmpfs -o mode=1777 tmp "$root/tmp"
mount -t proc proc "$root/proc"
echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
exec chroot "$root" env -i PATH=/usr/bin:/bin HOME=/ "$@"
