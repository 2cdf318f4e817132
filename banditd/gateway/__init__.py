"""`banditd gateway`: an OpenAI-compatible HTTP front for banditd (issue 22, docs/gateway.md).

It is a client of banditd's gRPC API: Select picks the arm, the call goes to the arm's upstream
(httpx), other arms of Select's ranking are tried when it fails, and the call's usage goes back
through Feedback (usage_only). JSON twins of Select and Feedback serve callers without gRPC.
Modules: app (routes, process), chat (completions, fallback), upstream (httpx calls), usage
(measuring and reporting), routing (request -> Select), jsonapi, http_errors, metrics, cli.
"""
