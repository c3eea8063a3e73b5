"""Routing: which experts answer a question (the paper's recruitment and this project's variants, the routers that apply them, cost-aware cascades)."""
