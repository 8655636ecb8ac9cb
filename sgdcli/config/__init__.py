"""The experiment config: safe YAML reading, the pydantic schema, --set overrides and config error wording."""
