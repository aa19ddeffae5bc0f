#!/usr/bin/env bash
# Build a small image of the staging workshop from this machine's own packages, for Docker
# Engines that reach no registry: a root filesystem of busybox plus, by kind, redis-server or
# Debian's python3 standard library, with their shared libraries, imported with `docker import`.
#
#   build-image.sh base|redis|python TAG
set -euo pipefail

kind=$1 tag=$2
root=$(mktemp -d /tmp/staging-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT

copy_libs() {
    # The loader and every library a binary or extension module links, at their own paths.
    { ldd "$1" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r lib; do
        [ -e "$root$lib" ] || install -D "$(readlink -f "$lib")" "$root$lib"
    done
}

copy_with_libs() {
    install -D "$1" "$root$1"
    copy_libs "$1"
}

mkdir -p "$root"/{bin,etc,tmp,data,outputs,www,usr/local/bin}
chmod 0755 "$root"
chmod 1777 "$root/tmp"
install -m 0755 /bin/busybox "$root/bin/busybox"
for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"

if [ "$kind" = redis ]; then
    copy_with_libs /usr/bin/redis-server
    ln -sf redis-server "$root/usr/bin/redis-check-rdb"
    copy_with_libs /usr/bin/redis-cli
fi

if [ "$kind" = python ]; then
    copy_with_libs /usr/bin/python3.11
    ln -sf python3.11 "$root/usr/bin/python3"
    # The standard library without what no service imports (tests, GUI, installers).
    mkdir -p "$root/usr/lib/python3.11"
    tar -C /usr/lib/python3.11 -cf - \
        --exclude=test --exclude=idlelib --exclude=tkinter --exclude=turtledemo \
        --exclude=ensurepip --exclude=lib2to3 --exclude=site-packages --exclude=dist-packages \
        --exclude='config-3.11-*' . | tar -C "$root/usr/lib/python3.11" -xf -
    for mod in /usr/lib/python3.11/lib-dynload/*.so; do copy_libs "$mod"; done
fi

tar -C "$root" -cf - . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'ENV PYTHONUNBUFFERED=1' \
    --change 'WORKDIR /' \
    --message "comfy-wrapup staging image ($kind)" - "$tag" >/dev/null
echo "$tag"
