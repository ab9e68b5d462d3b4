//! Hostile upstreams: endless lines, resets after the request was sent, huge and redirected
//! answers, failures that must not multiply cost or open a breaker for everyone.
