//! Secrets Manager: one secret holding a JSON object of name → value, which the configuration's
//! secret references (`token_env`, `secret_env`, …) resolve from when the process environment
//! does not have the name. Read once per container, so rotating a value takes a new container
//! (or a redeploy); values are never logged.

use std::collections::HashMap;

/// Why the secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The API call failed (permissions, a missing secret, the network). The message is the
    /// SDK's error chain, which never carries the value.
    #[error("reading secrets: {0}")]
    Aws(String),
    /// The secret is not a JSON object of strings.
    #[error("the secrets secret must be a JSON object of name → string value")]
    Shape,
}

/// Read the secret `arn` with the default AWS configuration.
pub async fn load(arn: &str) -> Result<HashMap<String, String>, SecretsError> {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    let client = aws_sdk_secretsmanager::Client::new(&sdk);
    let out = client
        .get_secret_value()
        .secret_id(arn)
        .send()
        .await
        .map_err(|e| SecretsError::Aws(aws_sdk_secretsmanager::error::DisplayErrorContext(e).to_string()))?;
    parse(out.secret_string().unwrap_or("{}"))
}

/// The secret's text → name/value pairs; non-string values are skipped.
pub fn parse(text: &str) -> Result<HashMap<String, String>, SecretsError> {
    let map: HashMap<String, serde_json::Value> = serde_json::from_str(text).map_err(|_| SecretsError::Shape)?;
    Ok(map
        .into_iter()
        .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_kept_and_other_values_skipped() {
        let m = parse(r#"{"A":"x","B":1,"C":"y"}"#).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m["A"], "x");
        assert!(matches!(parse("[1]"), Err(SecretsError::Shape)));
        assert!(matches!(parse("not json"), Err(SecretsError::Shape)));
    }
}
