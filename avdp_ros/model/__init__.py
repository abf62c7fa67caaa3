"""Model core (pure torch, no rclpy): tokenizer, autoregressive video model, inverse dynamics."""
