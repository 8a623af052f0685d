//! The poll function: every minute (EventBridge), enqueue the repositories that are due, and
//! every repository once after a configuration change. All logic is in `gitferry_core::poll`.

use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let rt = gitferry_lambda::Runtime::init().await?;
    let rt = &rt;
    lambda_runtime::run(service_fn(
        move |_: LambdaEvent<gitferry_lambda::ScheduledEvent>| async move {
            let tick = gitferry_lambda::poll(rt, gitferry_lambda::now_secs())
                .await
                .map_err(Error::from)?;
            Ok::<_, Error>(gitferry_lambda::tick_json(&tick))
        },
    ))
    .await
}
