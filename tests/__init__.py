"""tetsu tests: unit/ (fakes, memory transport), integration/ (real RabbitMQ)."""
