//! Welcome email sent once: a `UserSignedUp` consumer whose effect is outside any database.
//!
//! ```sh
//! cargo run -p oncely-examples --bin welcome-email -- publish --to amqp://127.0.0.1:5672/signups
//! cargo run -p oncely-examples --bin welcome-email -- consume --from amqp://guest:guest@127.0.0.1:5672/signups
//! ```
//!
//! The key is the payload's `/userId`; the store (SQLite by default) remembers who was greeted,
//! so a redelivered or re-published signup sends nothing. "Sending" appends a line to
//! `--sent FILE`, standing in for a mail API.
//!
//! The effect is not in the store's database, so one window stays open: a crash after the
//! email left and before the claim is completed sends it again once the claim's lease runs out.
//! An email provider's own idempotency key (the oncely key) closes it where the provider has
//! one; an effect in your own database closes it with the transactional inbox (see
//! `order-inventory`).

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use oncely::consumer::{Message, OncelyHandler};
use oncely::{Consumer, Key, Oncely, Scope};

#[derive(Parser)]
#[command(about = "Welcome email sent once per user, however often the signup is delivered")]
enum Cli {
    /// Publishes signups, some of them twice.
    Publish {
        /// `nats://HOST[:PORT]/STREAM` or `amqp://[USER:PASS@]HOST[:PORT]/QUEUE`.
        #[arg(long)]
        to: String,
        /// Distinct users.
        #[arg(long, default_value_t = 100)]
        users: usize,
        /// Signups published a second time.
        #[arg(long, default_value_t = 30)]
        duplicates: usize,
    },
    /// Greets each new user once, until Ctrl-C.
    Consume(Consume),
}

#[derive(clap::Args)]
struct Consume {
    /// `nats://HOST/STREAM/CONSUMER` or `amqp://USER:PASS@HOST/QUEUE`.
    #[arg(long)]
    from: String,
    /// Where greeted users are remembered.
    #[arg(long, default_value = "sqlite:welcome.db")]
    store: String,
    /// The "mail server": one line per email sent.
    #[arg(long, default_value = "sent-emails.txt")]
    sent: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = match Cli::parse() {
        Cli::Publish {
            to,
            users,
            duplicates,
        } => {
            let payloads: Vec<Vec<u8>> = (0..users)
                .chain((0..duplicates.min(users)).map(|n| n * 3 % users))
                .map(|n| {
                    let user = serde_json::json!({"userId": format!("u-{n}"), "email": format!("user{n}@example.com")});
                    user.to_string().into_bytes()
                })
                .collect();
            oncely_examples::publish(&to, &payloads).await?;
            println!("published {} signups ({users} users)", payloads.len());
            return Ok(());
        }
        Cli::Consume(consume) => consume,
    };
    let source = oncely::broker::connect(&cli.from).await?;
    let oncely =
        Oncely::new(oncely::connect(&cli.store).await?).with_lease(Duration::from_secs(60));
    let sent = cli.sent.clone();
    let handler = OncelyHandler::new(
        oncely,
        Scope::new("welcome-email")?,
        move |key: Key, message: Message| {
            let sent = sent.clone();
            async move {
                let user: serde_json::Value = serde_json::from_slice(message.payload())?;
                let to = user["email"].as_str().unwrap_or("unknown@example.com");
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&sent)?;
                writeln!(file, "welcome email to {to} (user {key})")?;
                Ok::<_, anyhow::Error>(b"sent".to_vec())
            }
        },
    );
    let consumer = Consumer::new(handler, "/userId".parse()?).concurrency(8);
    eprintln!("consuming {}; Ctrl-C to stop", cli.from);
    let report = consumer
        .run(source, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    eprintln!("{report:?}");
    Ok(())
}
