# RabbitMQ for the AMQP bus tests (tests/rabbitmqserver.py starts a private node).
APT_PACKAGES="$APT_PACKAGES rabbitmq-server"
