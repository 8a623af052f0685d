//! The webhook function: API Gateway HTTP API → verify, enqueue; status and manual-sync routes.
//! All logic is in `gitferry_lambda::webhook` and `gitferry_core::api`.

use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let rt = gitferry_lambda::Runtime::init().await?;
    let rt = &rt;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<gitferry_lambda::ApiRequest>| async move {
            Ok::<_, Error>(gitferry_lambda::webhook(rt, event.payload).await)
        },
    ))
    .await
}
