#!/bin/sh
# The official image's interface: RABBITMQ_DEFAULT_USER/_PASS name the first user, who
# may connect from other containers (guest may only connect from localhost).
set -eu
cat >/etc/rabbitmq/rabbitmq.conf <<CONF
default_user = ${RABBITMQ_DEFAULT_USER:-guest}
default_pass = ${RABBITMQ_DEFAULT_PASS:-guest}
loopback_users = none
listeners.tcp.default = 5672
CONF
chown -R rabbitmq: /var/lib/rabbitmq
cd /var/lib/rabbitmq
# Debian's /usr/sbin/rabbitmq-server wraps the broker in su, which keeps `docker stop`'s
# SIGTERM from it: run the broker's own script as its user, with nothing in between.
exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups env HOME=/var/lib/rabbitmq \
    /usr/lib/rabbitmq/bin/rabbitmq-server
