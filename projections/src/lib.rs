//! thitl's read models.
