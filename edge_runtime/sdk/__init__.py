"""The integrator SDK: what a scanner, a display or a controller links against. `sender` (frames in), `subscriber`
(results out), `control` (the daemon's control socket), `overlay` (drawing a result), `security` (CURVE keys) and
`liveness` (the one rule for "AI live" and "fresh"). It knows the daemon only by the wire protocol: it imports the
core layer, never the daemon, the backends or the integrations.
"""
