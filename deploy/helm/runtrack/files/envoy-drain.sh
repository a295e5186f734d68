# The Envoy pod's preStop hook (bash, run with the drain time in seconds as $1): Envoy fails its
# readiness answer, drains its listeners over the drain time (--drain-time-s), and the hook waits that
# long before Kubernetes sends SIGTERM. The admin listens on loopback only; bash reaches it through
# /dev/tcp, as the image has no HTTP client.
admin() {
  exec 3<>/dev/tcp/127.0.0.1/9901 || return
  printf 'POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' "$1" >&3
  cat <&3 >/dev/null
  exec 3<&-
}
admin /healthcheck/fail
admin '/drain_listeners?graceful'
sleep "$1"
