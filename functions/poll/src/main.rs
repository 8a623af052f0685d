//! The poll function: every minute (EventBridge), the shared poller — probe the due
//! repositories and enqueue what needs a sync, and every repository once after a configuration
//! change. All logic is in `gitferry_core::poll`.

use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let rt = gitferry_lambda::Runtime::init().await?;
    let rt = &rt;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<gitferry_lambda::ScheduledEvent>| async move {
            let tick = gitferry_lambda::poll(rt, gitferry_lambda::tick_time(&event.payload)).await?;
            Ok::<_, Diagnostic>(gitferry_lambda::tick_json(&tick))
        },
    ))
    .await
}
