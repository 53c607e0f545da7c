//! Wakes log waiters (long-polls, event followers, consumer groups) when a tenant's log grows.
//! Best effort and in-process; other processes are woken through the cluster fan-out. Imports
//! nothing of the crate.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

#[derive(Debug, Default)]
pub struct Notifier {
    tenants: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Notifier {
    pub fn subscribe(&self, tenant: &str) -> watch::Receiver<u64> {
        let mut map = self.tenants.lock().expect("notifier lock");
        map.entry(tenant.to_string()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// How many long-polls are parked on `tenant` (tests wait for this instead of sleeping).
    pub fn waiting(&self, tenant: &str) -> usize {
        let map = self.tenants.lock().expect("notifier lock");
        map.get(tenant).map(|tx| tx.receiver_count()).unwrap_or(0)
    }

    /// Wake everyone waiting on `tenant` although the log did not grow (a dead letter went
    /// back to its group).
    pub fn kick(&self, tenant: &str) {
        let map = self.tenants.lock().expect("notifier lock");
        if let Some(tx) = map.get(tenant) {
            tx.send_modify(|_| {});
        }
    }

    /// Wake everyone waiting on `key`, or forget it when nobody waits: for keys whose value
    /// means nothing (documents), so the map holds only what someone waits on. (A tenant's
    /// value is its log head, which waiters read: those are never forgotten.)
    pub fn wake_or_forget(&self, key: &str) {
        let mut map = self.tenants.lock().expect("notifier lock");
        match map.get(key) {
            Some(tx) if tx.receiver_count() == 0 => {
                map.remove(key);
            }
            Some(tx) => tx.send_modify(|_| {}),
            None => {}
        }
    }

    /// Tenants someone is waiting on.
    pub fn tenants(&self) -> Vec<String> {
        self.tenants.lock().expect("notifier lock").keys().cloned().collect()
    }

    pub fn notify(&self, tenant: &str, seq: u64) {
        let map = self.tenants.lock().expect("notifier lock");
        if let Some(tx) = map.get(tenant) {
            tx.send_if_modified(|v| {
                let grew = seq > *v;
                *v = (*v).max(seq);
                grew
            });
        }
    }
}
