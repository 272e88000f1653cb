package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// scenBackup is scenario 7; it needs the master.
func (r *Runner) scenBackup(ctx context.Context, sec *Section) error {
	if _, err := os.Stat(filepath.Join(r.Repo, "master")); err != nil {
		return fmt.Errorf("%w: the master package is not in the tree yet", ErrSkip)
	}
	return fmt.Errorf("%w: not implemented yet", ErrSkip)
}
