"""the review store: events, verdicts, queue items, labels, skips, reports

Revision ID: 0001
Revises: (none)
"""

import sqlalchemy as sa
from alembic import op

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('events',
    sa.Column('event_id', sa.String(length=256), nullable=False),
    sa.Column('conversation_id', sa.String(length=256), nullable=False),
    sa.Column('tenant', sa.String(length=256), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('response', sa.Text(), nullable=True),
    sa.Column('images', sa.JSON(), nullable=False),
    sa.Column('modality', sa.String(length=8), nullable=False),
    sa.Column('source_topic', sa.String(length=256), nullable=True),
    sa.Column('source_partition', sa.Integer(), nullable=True),
    sa.Column('source_offset', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('event_id')
    )
    op.create_table('reports',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=256), nullable=False),
    sa.Column('reporter', sa.String(length=256), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('reported_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reports_event_id'), ['event_id'], unique=False)

    op.create_table('queue_items',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=256), nullable=False),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('random_sample', sa.Boolean(), nullable=False),
    sa.Column('reviews_wanted', sa.Integer(), nullable=False),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('done_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claimed_by', sa.String(length=256), nullable=True),
    sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['event_id'], ['events.event_id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('event_id')
    )
    with op.batch_alter_table('queue_items', schema=None) as batch_op:
        batch_op.create_index('queue_items_open', ['done_at', 'priority', 'enqueued_at'], unique=False)
        batch_op.create_index('queue_items_random', ['random_sample', 'done_at'], unique=False)

    op.create_table('verdicts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=256), nullable=False),
    sa.Column('topic', sa.String(length=256), nullable=False),
    sa.Column('partition', sa.Integer(), nullable=False),
    sa.Column('offset', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('request_harmful', sa.Boolean(), nullable=True),
    sa.Column('response_harmful', sa.Boolean(), nullable=True),
    sa.Column('request_score', sa.Float(), nullable=True),
    sa.Column('response_score', sa.Float(), nullable=True),
    sa.Column('reasoning', sa.Text(), nullable=False),
    sa.Column('model_name', sa.Text(), nullable=False),
    sa.Column('model_version', sa.Text(), nullable=False),
    sa.Column('policy_version', sa.Text(), nullable=False),
    sa.Column('decided_by', sa.Text(), nullable=True),
    sa.Column('cache_hit', sa.Boolean(), nullable=False),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('timings_ms', sa.JSON(), nullable=False),
    sa.Column('stages', sa.JSON(), nullable=False),
    sa.Column('produced_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['event_id'], ['events.event_id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('topic', 'partition', 'offset', name='verdicts_at_coordinates')
    )
    with op.batch_alter_table('verdicts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_verdicts_event_id'), ['event_id'], unique=False)

    op.create_table('labels',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.String(length=256), nullable=False),
    sa.Column('reviewer', sa.String(length=256), nullable=False),
    sa.Column('request_harmful', sa.Boolean(), nullable=False),
    sa.Column('response_harmful', sa.Boolean(), nullable=True),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('labelled_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('verdict_id', sa.Integer(), nullable=True),
    sa.Column('publish_after', sa.DateTime(timezone=True), nullable=False),
    sa.Column('publishing_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('published_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('undone_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['item_id'], ['queue_items.id'], ),
    sa.ForeignKeyConstraint(['verdict_id'], ['verdicts.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.create_index('labels_by_reviewer', ['reviewer', 'labelled_at'], unique=False)
        batch_op.create_index('labels_of_item', ['item_id'], unique=False)
        batch_op.create_index('labels_one_live', ['item_id', 'reviewer'], unique=True, postgresql_where=sa.text('undone_at IS NULL'), sqlite_where=sa.text('undone_at IS NULL'))
        batch_op.create_index('labels_to_publish', ['published_at', 'publish_after'], unique=False)

    op.create_table('skips',
    sa.Column('item_id', sa.Integer(), nullable=False),
    sa.Column('reviewer', sa.String(length=256), nullable=False),
    sa.Column('skipped_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['item_id'], ['queue_items.id'], ),
    sa.PrimaryKeyConstraint('item_id', 'reviewer')
    )


def downgrade() -> None:
    op.drop_table('skips')
    with op.batch_alter_table('labels', schema=None) as batch_op:
        batch_op.drop_index('labels_to_publish')
        batch_op.drop_index('labels_one_live', postgresql_where=sa.text('undone_at IS NULL'), sqlite_where=sa.text('undone_at IS NULL'))
        batch_op.drop_index('labels_of_item')
        batch_op.drop_index('labels_by_reviewer')

    op.drop_table('labels')
    with op.batch_alter_table('verdicts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_verdicts_event_id'))

    op.drop_table('verdicts')
    with op.batch_alter_table('queue_items', schema=None) as batch_op:
        batch_op.drop_index('queue_items_random')
        batch_op.drop_index('queue_items_open')

    op.drop_table('queue_items')
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reports_event_id'))

    op.drop_table('reports')
    op.drop_table('events')
