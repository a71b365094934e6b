//! The broker behaviour suite against the RabbitMQ server at `ONCELY_AMQP_URL`
//! (default `amqp://guest:guest@127.0.0.1:5672/%2f`).

mod support;

fn main() {
    let base = std::env::var("ONCELY_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    support::run("rabbitmq", base, true, Vec::new()).exit()
}
