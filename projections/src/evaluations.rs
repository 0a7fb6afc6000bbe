//! Every evaluation recorded, by association: what `/v1/associations/{id}/evaluation` serves and
//! the evaluations export lists.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::campaign::{AssociationEvaluation, CampaignEvent};
use domain::*;
use serde::{Deserialize, Serialize};

use crate::Projection;

/// One campaign's evaluation of one association (each arm it ran).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationRecord {
    pub campaign_id: CampaignId,
    /// The position of the `EvaluationRecorded` event.
    pub position: u64,
    pub recorded_at: DateTime<Utc>,
    pub arms: Vec<AssociationEvaluation>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluations {
    /// Oldest first.
    pub by_association: BTreeMap<AssociationId, Vec<EvaluationRecord>>,
}

impl Evaluations {
    /// The newest evaluation of `association`, if any campaign evaluated it.
    pub fn latest(&self, association: AssociationId) -> Option<&EvaluationRecord> {
        self.by_association.get(&association).and_then(|records| records.last())
    }
}

impl Projection for Evaluations {
    const NAME: &'static str = "evaluations";

    fn apply(&mut self, event: &Recorded) {
        let DomainEvent::Campaign(CampaignEvent::EvaluationRecorded { campaign_id, evaluations }) = &event.event else {
            return;
        };
        let mut by_association: BTreeMap<AssociationId, Vec<AssociationEvaluation>> = BTreeMap::new();
        for evaluation in evaluations {
            by_association.entry(evaluation.association_id).or_default().push(evaluation.clone());
        }
        for (association, arms) in by_association {
            let record = EvaluationRecord {
                campaign_id: *campaign_id,
                position: event.position,
                recorded_at: event.metadata.recorded_at,
                arms,
            };
            self.by_association.entry(association).or_default().push(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::campaign::RateEstimate;
    use domain::fine_tune::Arm;
    use domain::metadata::EventMetadata;
    use uuid::Uuid;

    fn recorded(position: u64, campaign: u128, evaluations: Vec<AssociationEvaluation>) -> Recorded {
        let campaign_id = CampaignId(Uuid::from_u128(campaign));
        Recorded {
            position,
            stream: campaign_id.stream(),
            version: 5,
            event_type: "EvaluationRecorded".into(),
            metadata: EventMetadata {
                event_id: Uuid::from_u128(position.into()),
                recorded_at: DateTime::from_timestamp(1_800_000_000 + position as i64, 0).unwrap(),
                actor: Actor::system(),
                correlation_id: Uuid::nil(),
                causation_id: None,
            },
            event: DomainEvent::Campaign(CampaignEvent::EvaluationRecorded { campaign_id, evaluations }),
        }
    }

    fn evaluation(association: u128, arm: Arm, after: f64) -> AssociationEvaluation {
        let estimate = |rate: f64| RateEstimate {
            positives: (rate * 100.0) as u32,
            n: 100,
            rate,
            ci_low: rate / 2.0,
            ci_high: rate * 1.5,
        };
        AssociationEvaluation {
            association_id: AssociationId(Uuid::from_u128(association)),
            arm,
            before: estimate(0.25),
            after: estimate(after),
            quality_before: 0.99,
            quality_after: 0.98,
            win_rate: None,
            alpha: Some(0.8),
            quality_source: None,
            people_quality_before: None,
            people_quality_after: None,
            aggregation: None,
        }
    }

    #[test]
    fn each_association_keeps_its_arms_per_campaign_newest_last() {
        let mut evaluations = Evaluations::default();
        evaluations.apply(&recorded(
            7,
            1,
            vec![
                evaluation(10, Arm::Thitl, 0.02),
                evaluation(11, Arm::Thitl, 0.05),
                evaluation(10, Arm::Traditional, 0.03),
            ],
        ));
        evaluations.apply(&recorded(9, 2, vec![evaluation(10, Arm::Thitl, 0.01)]));
        let first = &evaluations.by_association[&AssociationId(Uuid::from_u128(10))][0];
        assert_eq!((first.position, first.arms.len()), (7, 2));
        assert_eq!(first.arms.iter().map(|e| e.arm).collect::<Vec<_>>(), vec![Arm::Thitl, Arm::Traditional]);
        let latest = evaluations.latest(AssociationId(Uuid::from_u128(10))).unwrap();
        assert_eq!(
            (latest.campaign_id, latest.position, latest.arms[0].after.rate),
            (CampaignId(Uuid::from_u128(2)), 9, 0.01)
        );
        assert_eq!(evaluations.latest(AssociationId(Uuid::from_u128(11))).unwrap().arms.len(), 1);
        assert!(evaluations.latest(AssociationId(Uuid::from_u128(12))).is_none());
    }
}
