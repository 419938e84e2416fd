"""Built-in filters. Each module is an ordinary plugin: it implements ``register_filters``."""
