//! Domain types shared by the store, the pipeline and the API: roles, statuses and the
//! state machine of a campaign. Rows themselves live next to their queries in `store`.

use serde::{Deserialize, Serialize};

/// The id of the one workspace (tenant) that exists until multi-tenancy lands.
pub const DEFAULT_WORKSPACE: i64 = 1;

/// Milliseconds since the Unix epoch, the one time representation in the store.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(salvo::oapi::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as stored in the database and shown in the API.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownValue {
                        kind: stringify!($name),
                        value: other.chars().take(64).collect(),
                        expected: vec![$($text),+].join(", "),
                    }),
                }
            }
        }
    };
}

/// A string that names no value of a domain enum.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown {kind} '{value}': expected one of {expected}")]
pub struct UnknownValue {
    kind: &'static str,
    value: String,
    expected: String,
}

string_enum!(
    /// What a user may do. Admins manage users and operations; editors manage lists,
    /// templates and campaigns; viewers read.
    Role {
        Admin => "admin",
        Editor => "editor",
        Viewer => "viewer",
    }
);

impl Role {
    /// Whether this role includes everything `needed` allows.
    pub fn includes(self, needed: Role) -> bool {
        self.rank() >= needed.rank()
    }

    fn rank(self) -> u8 {
        match self {
            Role::Viewer => 0,
            Role::Editor => 1,
            Role::Admin => 2,
        }
    }
}

string_enum!(
    /// Whether a subscriber may receive campaigns.
    SubscriberStatus {
        Enabled => "enabled",
        Unsubscribed => "unsubscribed",
        Blocklisted => "blocklisted",
    }
);

string_enum!(
    /// The life of a campaign: `draft → scheduled → running ⇄ paused → done`, with
    /// `cancelled` and `failed` as the other ends.
    CampaignStatus {
        Draft => "draft",
        Scheduled => "scheduled",
        Running => "running",
        Paused => "paused",
        Done => "done",
        Cancelled => "cancelled",
        Failed => "failed",
    }
);

impl CampaignStatus {
    /// Whether a campaign may move from `self` to `next`.
    pub fn can_become(self, next: CampaignStatus) -> bool {
        use CampaignStatus::*;
        matches!(
            (self, next),
            (Draft, Scheduled | Running | Cancelled)
                | (Scheduled, Running | Cancelled | Draft)
                | (Running, Paused | Done | Cancelled | Failed)
                | (Paused, Running | Cancelled)
        )
    }

    /// Whether nothing more will happen to the campaign.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CampaignStatus::Done | CampaignStatus::Cancelled | CampaignStatus::Failed
        )
    }
}

string_enum!(
    /// The outcome of one recipient of one campaign, as the ledger records it.
    DeliveryStatus {
        /// Planned, not yet claimed by a sender.
        Pending => "pending",
        /// Claimed by a sender; the provider may or may not have it. Stored as `pending`
        /// with `claimed_at` set since migration 0010 (`store::deliveries`), reported as
        /// `sending`.
        Sending => "sending",
        /// Accepted by the provider.
        Sent => "sent",
        /// Refused for good, or retries exhausted.
        Failed => "failed",
        /// Left out on purpose (a plugin verdict, a suppression found at send time).
        Skipped => "skipped",
        /// The provider reported a bounce.
        Bounced => "bounced",
        /// The recipient marked the message as spam.
        Complained => "complained",
    }
);

string_enum!(
    /// The delivery providers a campaign can name.
    ProviderKind {
        /// `.eml` files in the outbox directory (the development default).
        File => "file",
        /// An SMTP relay.
        Smtp => "smtp",
        /// A Resend-compatible HTTP API.
        Resend => "resend",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaign_cannot_leave_a_final_state() {
        for s in CampaignStatus::ALL {
            for n in CampaignStatus::ALL {
                if s.is_final() {
                    assert!(!s.can_become(*n), "{s} -> {n}");
                }
            }
        }
    }

    #[test]
    fn paused_campaign_resumes_to_running_only_from_paused() {
        assert!(CampaignStatus::Paused.can_become(CampaignStatus::Running));
        assert!(!CampaignStatus::Draft.can_become(CampaignStatus::Paused));
    }

    #[test]
    fn unknown_role_names_the_expected_values() {
        let err = "root".parse::<Role>().unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown Role 'root': expected one of admin, editor, viewer"
        );
    }

    #[test]
    fn admin_includes_every_role_and_viewer_only_itself() {
        assert!(Role::Admin.includes(Role::Editor));
        assert!(Role::Viewer.includes(Role::Viewer));
        assert!(!Role::Viewer.includes(Role::Editor));
    }
}
