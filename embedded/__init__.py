"""The embedded CPU default: both services started as local processes (`make serve`).

    python -m embedded up | down | status      # see embedded/launch.py

A top-level package, beside `protocol/`, `services/` and `client/`, because neither side owns
it: it starts the generator and the trainer (as `python -m services.generator` and `python -m
services.trainer` command lines, never by importing them), and the client uses it to restart
the embedded generator on a merged model (`generator.embedded: true` in a run config). In
`services/` the client would reach into a service to get it; in `client/` a service-side tool
would depend on the client. It needs httpx and the standard library only.
"""
