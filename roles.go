package iotkv

// Role names an account's powers.
type Role string

// Roles, as in the accounts file.
const (
	RoleDevice Role = "device" // writes and reads its own namespace
	RoleReader Role = "reader" // reads every namespace
	RoleWriter Role = "writer" // reads and writes every namespace over REST
	RoleAdmin  Role = "admin"  // everything, metrics included
	RoleMaster Role = "master" // subscribes to backup topics
	RoleEdge   Role = "edge"   // fetches its own backup from the master
)

// Valid reports whether r is a known role.
func (r Role) Valid() bool {
	switch r {
	case RoleDevice, RoleReader, RoleWriter, RoleAdmin, RoleMaster, RoleEdge:
		return true
	}
	return false
}

// CanRead reports whether r may read device's namespace as account name.
func (r Role) CanRead(name, device string) bool {
	switch r {
	case RoleReader, RoleWriter, RoleAdmin:
		return true
	case RoleDevice:
		return name == device
	}
	return false
}

// CanWrite reports whether r may write device's namespace as account name.
func (r Role) CanWrite(name, device string) bool {
	switch r {
	case RoleWriter, RoleAdmin:
		return true
	case RoleDevice:
		return name == device
	}
	return false
}
