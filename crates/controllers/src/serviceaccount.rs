//! ServiceAccount "default" in every active namespace (recreated if deleted).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};

use crate::runtime::{get, Informer, Queue};
use crate::ControllersError;

/// The ServiceAccount controller.
pub struct ServiceAccountController {
    client: Client,
    namespaces: Store<Namespace>,
    accounts: Store<ServiceAccount>,
    queue: Queue,
}

impl ServiceAccountController {
    /// Wires the controller to the informers (the ServiceAccount one watches name=default).
    pub fn new(client: Client, namespaces: &Informer<Namespace>, accounts: &Informer<ServiceAccount>) -> Arc<Self> {
        let queue = Queue::new();
        let q = queue.clone();
        namespaces.on_change(move |_, new| {
            if let Some(n) = new {
                q.add(n.name_any());
            }
        });
        let q = queue.clone();
        accounts.on_change(move |old, new| {
            if new.is_none() {
                if let Some(ns) = old.and_then(|o| o.namespace()) {
                    q.add(ns);
                }
            }
        });
        Arc::new(ServiceAccountController { client, namespaces: namespaces.store(), accounts: accounts.store(), queue })
    }

    /// Runs the workers.
    pub async fn run(self: Arc<Self>, workers: usize) {
        let me = self.clone();
        crate::runtime::run_workers("serviceaccount", self.queue.clone(), workers, move |k| me.clone().reconcile(k)).await
    }

    async fn reconcile(self: Arc<Self>, ns: String) -> Result<Option<std::time::Duration>, ControllersError> {
        let Some(n) = get(&self.namespaces, &ns) else { return Ok(None) };
        if n.metadata.deletion_timestamp.is_some() || n.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating") {
            return Ok(None);
        }
        if get(&self.accounts, &format!("{ns}/default")).is_some() {
            return Ok(None);
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
        let sa = ServiceAccount { metadata: ObjectMeta { name: Some("default".into()), namespace: Some(ns.clone()), ..Default::default() }, ..Default::default() };
        match api.create(&PostParams::default(), &sa).await {
            Ok(_) => Ok(None),
            Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 || s.code == 404 => Ok(None),
            Err(e) => Err(ControllersError::kube("creating serviceaccount default in", ns, e)),
        }
    }
}
