"""The request flows: Select (ranking, shadows, decision log), Feedback (guard, tokens, usage) and
admin. Each flow reads and writes state, context, policy, budget and store; none knows gRPC."""
