//! The ACME side: the account (created once per CA and reused) and one order for a route's
//! domains, with instant-acme over our own HTTPS client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, RetryPolicy,
};
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::certs;
use crate::challenge::Challenges;
use crate::client::{CaClient, CaStats};
use crate::config::{AcmeConfig, Challenge};
use crate::error::{Error, chain};
use crate::status::Timestamp;
use crate::store::{Store, write_atomic};

/// The account file: which CA, the contact it was created with, and instant-acme's
/// credentials (account URL and P-256 key).
#[derive(Serialize, Deserialize)]
struct SavedAccount {
    directory: String,
    email: Option<String>,
    created: i64,
    credentials: AccountCredentials,
}

/// Everything the manager needs for ACME, present when `[acme]` is configured.
pub(crate) struct AcmeRuntime {
    pub(crate) config: AcmeConfig,
    pub(crate) store: Store,
    pub(crate) stats: Arc<CaStats>,
    roots: Option<RootCertStore>,
    /// Loaded on the first order, not at start: a restart with valid certificates sends
    /// nothing to the CA.
    account: tokio::sync::Mutex<Option<Account>>,
    /// One order at a time.
    pub(crate) issuing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AcmeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeRuntime")
            .field("directory", &self.config.directory)
            .field("storage", &self.store.root())
            .finish_non_exhaustive()
    }
}

impl AcmeRuntime {
    pub(crate) fn new(config: AcmeConfig) -> Result<Self, Error> {
        let roots = match &config.ca_roots {
            Some(p) => Some(crate::config::load_roots(p).map_err(Error::Certificate)?),
            None => None,
        };
        let store = Store::open(&config.storage)?;
        Ok(Self {
            config,
            store,
            stats: Arc::new(CaStats::default()),
            roots,
            account: tokio::sync::Mutex::new(None),
            issuing: tokio::sync::Mutex::new(()),
        })
    }

    fn http(&self) -> Result<Box<CaClient>, Error> {
        CaClient::new(self.roots.clone(), Arc::clone(&self.stats))
            .map(Box::new)
            .map_err(|message| Error::Acme { step: "client", message })
    }

    /// The account: cached, else restored from the store, else created and stored.
    async fn account(&self) -> Result<Account, Error> {
        let mut cached = self.account.lock().await;
        if let Some(a) = cached.as_ref() {
            return Ok(a.clone());
        }
        let directory = &self.config.directory;
        let path = self.store.account_path(directory);
        let account = match self.store.read(&path)? {
            Some(bytes) => {
                let saved: SavedAccount =
                    serde_json::from_slice(&bytes).map_err(|e| Error::storage(&path, e))?;
                Account::builder_with_http(self.http()?)
                    .from_credentials(saved.credentials)
                    .await
                    .map_err(|e| Error::acme("account", &e))?
            }
            None => {
                let contact: Vec<String> =
                    self.config.email.iter().map(|e| format!("mailto:{e}")).collect();
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let new = NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                };
                let (account, credentials) = Account::builder_with_http(self.http()?)
                    .create(&new, directory.clone(), None)
                    .await
                    .map_err(|e| Error::acme("account", &e))?;
                let saved = SavedAccount {
                    directory: directory.clone(),
                    email: self.config.email.clone(),
                    created: Timestamp::now().unix_seconds(),
                    credentials,
                };
                let json =
                    serde_json::to_vec_pretty(&saved).map_err(|e| Error::storage(&path, e))?;
                write_atomic(&path, &json)?;
                info!(directory = %directory, account = account.id(), "ACME account created");
                account
            }
        };
        *cached = Some(account.clone());
        Ok(account)
    }

    /// The CA no longer knows the stored account: set its file aside so that the next
    /// order creates a new one.
    async fn forget_account(&self) {
        *self.account.lock().await = None;
        let path = self.store.account_path(&self.config.directory);
        warn!(file = %path.display(), "the CA does not know the stored ACME account; a new one will be created");
        if let Err(e) = self.store.set_aside(&path) {
            warn!(error = %e, "cannot set the unknown account aside");
        }
    }

    /// Runs one order for `domains` and returns the PEM bundle (chain, then key).
    pub(crate) async fn obtain(
        &self,
        challenges: &Arc<Challenges>,
        domains: &[String],
    ) -> Result<String, Error> {
        let unknown_account = AtomicBool::new(false);
        let result = self.order(challenges, domains, &unknown_account).await;
        if unknown_account.load(Ordering::Relaxed) {
            self.forget_account().await;
        }
        result
    }

    async fn order(
        &self,
        challenges: &Arc<Challenges>,
        domains: &[String],
        unknown_account: &AtomicBool,
    ) -> Result<String, Error> {
        // Any request of the order can be the one that learns the CA forgot the account.
        let fail = |step: &'static str| {
            move |e: instant_acme::Error| {
                if is_problem(&e, "accountDoesNotExist") {
                    unknown_account.store(true, Ordering::Relaxed);
                }
                Error::acme(step, &e)
            }
        };
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = domains.iter().cloned().map(Identifier::Dns).collect();
        let mut order =
            account.new_order(&NewOrder::new(&identifiers)).await.map_err(fail("new order"))?;

        let kind = match self.config.challenge {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        // Answers stay up until this function returns (the guards remove them).
        let mut guards = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(next) = authorizations.next().await {
            let mut authz = next.map_err(fail("authorization"))?;
            let ident = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                s => {
                    return Err(Error::Acme {
                        step: "authorization",
                        message: format!("`{ident}` is {s:?}"),
                    });
                }
            }
            let Some(mut challenge) = authz.challenge(kind.clone()) else {
                return Err(Error::Acme {
                    step: "challenge",
                    message: format!(
                        "the CA offers no {} challenge for `{ident}`",
                        self.config.challenge
                    ),
                });
            };
            let key_auth = challenge.key_authorization();
            guards.push(match self.config.challenge {
                Challenge::Http01 => {
                    challenges.add_http01(challenge.token.clone(), key_auth.as_str().to_owned())
                }
                Challenge::TlsAlpn01 => {
                    let cert = certs::tls_alpn01(&ident, key_auth.digest().as_ref())
                        .map_err(Error::Certificate)?;
                    challenges.add_tls_alpn01(&ident, cert)
                }
            });
            challenge.set_ready().await.map_err(fail("challenge"))?;
        }

        let policy = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(self.config.order_timeout);
        let status = order.poll_ready(&policy).await.map_err(fail("validation"))?;
        if status != OrderStatus::Ready {
            return Err(Error::Acme {
                step: "validation",
                message: invalid_reason(&mut order).await,
            });
        }
        let key_pem = order.finalize().await.map_err(fail("finalize"))?;
        let chain_pem = order.poll_certificate(&policy).await.map_err(fail("certificate"))?;
        drop(guards);
        let sep = if chain_pem.ends_with('\n') { "" } else { "\n" };
        Ok(format!("{chain_pem}{sep}{key_pem}"))
    }
}

/// Whether an instant-acme error is the CA's problem document of this type.
fn is_problem(e: &instant_acme::Error, kind: &str) -> bool {
    match e {
        instant_acme::Error::Api(p) => p
            .r#type
            .as_deref()
            .is_some_and(|t| t.strip_prefix("urn:ietf:params:acme:error:") == Some(kind)),
        _ => false,
    }
}

/// Why an order became invalid: the failed challenges' problems, per identifier.
async fn invalid_reason(order: &mut Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authz)) = authorizations.next().await {
        if let Ok(state) = authz.refresh().await {
            for c in &state.challenges {
                if let Some(p) = &c.error {
                    reasons.push(format!("`{}`: {}", state.identifier(), chain(p)));
                }
            }
        }
    }
    if reasons.is_empty() {
        match &order.state().error {
            Some(p) => format!("the order is invalid: {}", chain(p)),
            None => "the order is invalid (the CA gave no reason)".into(),
        }
    } else {
        format!("validation failed: {}", reasons.join("; "))
    }
}
