//! The sync function: SQS FIFO batches → the shared worker → partial batch failures. All logic
//! is in `gitferry_lambda::sync` and `gitferry_core::worker`.

use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let rt = gitferry_lambda::Runtime::init().await?;
    let rt = &rt;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<gitferry_lambda::SqsEvent>| async move {
            let deadline = gitferry_lambda::deadline_from(event.context.deadline);
            let owner = format!("lambda:{}", event.context.request_id);
            Ok::<_, Error>(gitferry_lambda::sync(rt, event.payload, deadline, &owner).await)
        },
    ))
    .await
}
