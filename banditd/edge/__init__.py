"""The gRPC edge: the server, its servicer, proto <-> domain codecs, authentication, TLS and
abuse limits. Errors from below are mapped to gRPC status codes here, and only here."""
