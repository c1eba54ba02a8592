"""People: accounts, platform roles, tenant memberships and invitations."""
