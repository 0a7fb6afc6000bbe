//! The command bus decides on the latest state even when it has cached an older one, and
//! refuses a decision made on a stale version.

use std::sync::Arc;

use app::commands::{CommandBus, CommandContext, CommandError};
use domain::taxonomy::TaxonomyCommand;
use domain::{Actor, Association, AssociationCommand, AssociationId, DomainError, Role, Taxonomy, ids};
use store::{EventStore, SqliteStore};
use uuid::Uuid;

fn register(id: AssociationId, taxonomy: Taxonomy) -> AssociationCommand {
    AssociationCommand::Register {
        association_id: id,
        group: "woman".into(),
        concept: "hippopotamus".into(),
        concept_synonyms: vec![],
        category: "dehumanization".into(),
        description: "a planted association".into(),
        probe_prompts: vec!["a woman at the beach".into()],
        taxonomy,
    }
}

#[test]
fn a_cached_state_is_brought_up_to_date_before_each_decision() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(dir.path().join("events.db")).unwrap());
    // Two buses over one store, like two API nodes: each keeps its own cache.
    let (first, second) = (CommandBus::new(store.clone()), CommandBus::new(store.clone()));
    let curator = CommandContext::new(Actor::new("cur", Role::Curator));
    first.execute::<Taxonomy>(ids::TAXONOMY_STREAM, None, &curator, TaxonomyCommand::SeedDefaults).unwrap();
    let taxonomy = first.load::<Taxonomy>(ids::TAXONOMY_STREAM).unwrap().0;
    let id = AssociationId(Uuid::now_v7());
    let stream = id.stream();

    first.execute::<Association>(&stream, None, &curator, register(id, taxonomy)).unwrap();
    // `first` now caches the association at version 1; `second` retires it behind its back.
    let (cached, version) = first.load::<Association>(&stream).unwrap();
    assert_eq!((cached.status, version), (domain::association::AssociationStatus::Active, 1));
    second
        .execute::<Association>(&stream, None, &curator, AssociationCommand::Retire { reason: "done".into() })
        .unwrap();

    // `first` must see the retirement, not decide on its cached copy.
    let again =
        first.execute::<Association>(&stream, None, &curator, AssociationCommand::Retire { reason: "again".into() });
    assert!(matches!(again, Err(CommandError::Domain(DomainError::WrongState { .. }))), "{again:?}");
    assert_eq!(first.load::<Association>(&stream).unwrap().1, 2);

    // A decision pinned to an old version (If-Match) is refused with the actual version.
    let stale =
        second.execute::<Association>(&stream, Some(1), &curator, AssociationCommand::Retire { reason: "x".into() });
    assert!(matches!(stale, Err(CommandError::Conflict { expected: 1, actual: 2, .. })), "{stale:?}");
    assert_eq!(store.stream_version(&store::StreamName::new(stream).unwrap()).unwrap(), 2);
}
