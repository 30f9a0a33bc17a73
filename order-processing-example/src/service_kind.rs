//! Which of the five services: each one's short name (in its queue's name and the logs) and
//! its port.

use crate::config::Settings;

/// The five services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// Orders and the order saga (5001).
    Order,
    /// Stock and reservations (5002).
    Inventory,
    /// The simulated payment gateway (5003).
    Payment,
    /// Customer notifications (5004).
    Notification,
    /// Daily figures and recent events (5005).
    Analytics,
}

impl ServiceKind {
    /// All five, in start order.
    pub const ALL: [ServiceKind; 5] = [
        ServiceKind::Order,
        ServiceKind::Inventory,
        ServiceKind::Payment,
        ServiceKind::Notification,
        ServiceKind::Analytics,
    ];

    /// The service's short name (`order`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Order => "order",
            ServiceKind::Inventory => "inventory",
            ServiceKind::Payment => "payment",
            ServiceKind::Notification => "notification",
            ServiceKind::Analytics => "analytics",
        }
    }

    /// The port `settings` give it.
    pub fn port(self, settings: &Settings) -> u16 {
        match self {
            ServiceKind::Order => settings.order_port,
            ServiceKind::Inventory => settings.inventory_port,
            ServiceKind::Payment => settings.payment_port,
            ServiceKind::Notification => settings.notification_port,
            ServiceKind::Analytics => settings.analytics_port,
        }
    }
}
