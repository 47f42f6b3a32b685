'use strict'

// event: { body, headers, method, query, path }
// context: status(code), headers(obj), succeed(value), fail(err) — chainable
// Return a value (objects are sent as JSON) or call context.succeed(value).
module.exports = async (event, context) => {
  const result = {
    'status': 'done'
  }

  return context
    .status(200)
    .succeed(result)
}
