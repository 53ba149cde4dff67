//! `ponte erase <nis>`: carries out the controller's decision to erase a person (LGPD art. 18,
//! docs/privacy.md). The order goes to the assistance adapter (`POST /v1/erasures`) with the
//! caller's credentials; the access policy must grant the principal the `erasure` record kind,
//! and the adapter audits the request (accepted or refused) like every write. A 2xx means the
//! order is durable on the bus; the reconciler then removes the person everywhere it keeps them.
use anyhow::Context as _;

/// Arguments of `ponte erase`.
#[derive(Debug, clap::Args)]
pub(crate) struct EraseArgs {
    /// NIS of the person to erase.
    pub(crate) nis: String,
    /// The controller's reference for the request (a case number; never personal data).
    #[arg(long)]
    pub(crate) reference: Option<String>,
    /// The assistance adapter's endpoint (default: `assistance_adapter.listen` of the
    /// configuration, `/v1/erasures`).
    #[arg(long)]
    pub(crate) url: Option<String>,
}

/// Sends the order; returns whether the adapter answered 2xx.
pub(crate) async fn run(
    args: EraseArgs,
    default_listen: &str,
    creds: &crate::client::ClientCreds,
) -> anyhow::Result<bool> {
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| format!("{}://{default_listen}/v1/erasures", creds.scheme()));
    let order = serde_json::json!({
        "nis": args.nis,
        "reference": args.reference.clone().unwrap_or_default(),
    });
    let resp = creds
        .http_client()?
        .post(&url)
        .json(&order)
        .send()
        .await
        .with_context(|| format!("sending the erasure order to {url}"))?;
    let status = resp.status();
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp.text().await.unwrap_or_default();
    println!("adapter    {url}");
    println!("status     {status}");
    if !request_id.is_empty() {
        println!("request    {request_id}");
    }
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    if let Some(rejected) = answer.get("rejected").and_then(|r| r.as_array()) {
        for r in rejected {
            println!(
                "rejected   {}: {}",
                r.get("field").and_then(|f| f.as_str()).unwrap_or_default(),
                r.get("reason").and_then(|f| f.as_str()).unwrap_or_default()
            );
        }
    }
    if let Some(e) = answer.get("error").and_then(|e| e.as_str()) {
        println!("error      {e}");
    }
    if status.is_success() {
        println!(
            "the order is on the bus: the reconciler removes the person from its state, the view \
             and their family's view; `ponte audit trace <source system>:erasure:<nis>` shows \
             who ordered it"
        );
    } else if answer.is_null() && !body.is_empty() {
        println!("answer     {body}");
    }
    Ok(status.is_success())
}
