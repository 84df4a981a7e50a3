'use strict';
// Error classes named as docs/protocol.md names them (the `edgerec-error` values and the device's
// refusals), so a test can compare what this client refused with what the reference SDK refuses.

class EdgerecError extends Error {
  constructor(message) {
    super(message);
    this.name = this.constructor.name;
  }
}

const classes = { EdgerecError };

function define(name, parent) {
  const cls = { [name]: class extends parent {} }[name];
  classes[name] = cls;
  return cls;
}

define('IntegrityError', EdgerecError);
const PatchError = define('PatchError', EdgerecError);
define('WrongBaseError', PatchError);
define('ManifestError', EdgerecError);
const TrustError = define('TrustError', EdgerecError);
define('SignatureError', TrustError);
define('UnknownKeyError', TrustError);
define('NoTrustedKeysError', TrustError);
define('FreshnessError', TrustError);
define('StaleAnswerError', classes.FreshnessError);
define('ExpiredError', TrustError);
define('RollbackError', TrustError);
define('WrongModelError', TrustError);
define('RecipeNotAllowedError', TrustError);
define('PayloadBudgetError', EdgerecError);
const TransportError = define('TransportError', EdgerecError);
define('NotFoundError', EdgerecError);
define('InvalidInputError', EdgerecError);
define('UnknownBaseVersionError', EdgerecError);
const AuthenticationError = define('AuthenticationError', EdgerecError);
define('PermissionDeniedError', AuthenticationError);
define('ResourceLimitError', EdgerecError);
define('InterruptedError', TransportError);

module.exports = classes;
